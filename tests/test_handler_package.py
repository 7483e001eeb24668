"""The handler's image holds only handler/, contract/ and handler/requirements.txt: check that is enough.

(contract/ imports only the standard library: tests/test_architecture.py holds it to that.)"""

from __future__ import annotations

import ast
import re
import sys

from localcloud.program import PROJECT_DIR

HANDLER = PROJECT_DIR / "handler"
# Import name -> distribution names, for the third-party modules the handler may use.
DISTRIBUTIONS = {
    "starlette": {"starlette"},
    "uvicorn": {"uvicorn"},
    "google": {"google-auth", "google-cloud-tasks"},
    "grpc": {"grpcio"},
    "redis": {"redis"},
    "orjson": {"orjson"},
}


def imported_roots() -> set[str]:
    roots = set()
    for source in HANDLER.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
    return roots


def test_handler_imports_only_itself_the_standard_library_and_pinned_packages() -> None:
    third_party = imported_roots() - set(sys.stdlib_module_names) - {"handler", "contract", "__future__"}
    assert third_party <= set(DISTRIBUTIONS), f"not in the image: {third_party - set(DISTRIBUTIONS)}"
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (HANDLER / "requirements.txt").read_text(), re.MULTILINE))
    assert set().union(*(DISTRIBUTIONS[root] for root in third_party)) <= set(pinned)
    # Same versions as the tested environment, so the tests test what the image runs.
    dev_pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (PROJECT_DIR / "requirements-dev.txt").read_text(), re.M))
    assert {name: pinned[name] for name in pinned if name in dev_pins} == {
        name: dev_pins[name] for name in pinned if name in dev_pins
    }


def test_handler_never_imports_pulumi_or_the_other_packages() -> None:
    assert not imported_roots() & {"pulumi", "pulumi_gcp", "components", "taskclient", "localcloud"}


def test_dockerfile_runs_the_module_on_all_interfaces_as_a_non_root_user() -> None:
    dockerfile = (HANDLER / "Dockerfile").read_text()
    assert "COPY handler/requirements.txt" in dockerfile and "pip install --no-cache-dir -r" in dockerfile
    # Built from the project root: the two packages the handler runs, and nothing else of the project.
    assert re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE) == ["handler/requirements.txt", "contract", "handler"]
    assert (PROJECT_DIR / ".dockerignore").read_text().split("\n")[1:4] == ["*", "!handler/", "!contract/"]
    assert re.search(r"^USER 10001$", dockerfile, re.MULTILINE)
    assert 'CMD ["python", "-m", "handler", "--host", "0.0.0.0"]' in dockerfile
