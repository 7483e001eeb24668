"""Local mode: the stack evaluated offline and realised on this machine."""
