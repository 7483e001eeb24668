import os
import sys

from taskclient.cli import main

# 128 + SIGPIPE, as a shell reports a command whose reader went away (`... | head -1`).
READER_GONE = 141

try:
    status = main()
    sys.stdout.flush()
except BrokenPipeError:
    # Nothing is wrong with the command: whoever read its output stopped. Point stdout at /dev/null so the
    # interpreter's final flush does not fail again, and stop without a traceback.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    status = READER_GONE
sys.exit(status)
