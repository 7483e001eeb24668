import sys
from pathlib import Path

# Test helpers (harness, gcp_schema) import as top-level modules; the project root holds the packages.
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]
