import sys
from pathlib import Path

# Test helpers (harness, gcp_schema) import as top-level modules; the project root holds the packages.
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]


import pytest  # noqa: E402

from harness import dev_run, run_stack  # noqa: E402
from localcloud.program import ProgramRun  # noqa: E402


@pytest.fixture(scope="session")
def dev() -> ProgramRun:
    """The dev stack's program run, for tests that only read it (evaluated once, on first use)."""
    return dev_run()


@pytest.fixture(scope="session")
def prod() -> ProgramRun:
    return run_stack("prod")
