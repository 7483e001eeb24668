"""The arrows between the packages, read from every module's imports (its syntax tree, not its text).

- handler/ and taskclient/ run without Pulumi: they import neither it nor components/ or localcloud/.
- components/ is infrastructure only: it imports neither handler/, taskclient/ nor localcloud/.
- contract/ is what they all share, so it needs nothing but the standard library.
- policy/ runs in its own virtualenv beside the program: of the program it imports contract/ only.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localcloud.program import PROJECT_DIR

PROGRAM_PACKAGES = frozenset({"components", "contract", "handler", "localcloud", "taskclient"})
PULUMI = frozenset({"pulumi", "pulumi_gcp", "pulumi_random", "pulumi_policy"})
ENV_NAME = re.compile(r"TASKS_[A-Z_]+")


@dataclass(frozen=True)
class Rule:
    package: str  # the folder whose modules the rule holds to
    forbidden: frozenset[str] | None  # top-level modules it may not import; None: all but `allowed`
    allowed: frozenset[str] = frozenset()
    why: str = ""

    def breaks(self, module: str) -> bool:
        root = module.split(".")[0]
        if self.forbidden is not None:
            return root in self.forbidden
        return root not in self.allowed


STANDARD_LIBRARY = frozenset(sys.stdlib_module_names) | {"__future__"}
RULES = (
    Rule(
        "handler",
        frozenset({"components", "localcloud"}) | PULUMI,
        why="the handler's image has no Pulumi and none of the stack's code",
    ),
    Rule(
        "taskclient",
        frozenset({"components", "localcloud"}) | PULUMI,
        why="producers install taskclient without Pulumi or the stack's code",
    ),
    Rule(
        "components",
        frozenset({"handler", "taskclient", "localcloud"}),
        why="components are infrastructure; what they share with the handler or producers is in contract/",
    ),
    Rule(
        "contract",
        None,
        STANDARD_LIBRARY | {"contract"},
        why="contract/ is shared by every package and environment, so it imports only the standard library",
    ),
    Rule(
        "policy",
        PROGRAM_PACKAGES - {"contract"},
        why="the policy pack runs in its own virtualenv; of the program it shares contract/ only",
    ),
)


def imports(source: Path, package_root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for each import in `source`, relative ones resolved, and for each
    importlib.import_module / __import__ call with a literal name."""
    parts = source.relative_to(package_root).with_suffix("").parts
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and _called(node) in ("import_module", "__import__") and node.args:
            name = node.args[0]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                yield node.lineno, name.value


def _called(call: ast.Call) -> str:
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")


def violations(root: Path) -> list[str]:
    found = []
    for rule in RULES:
        folder = root / rule.package
        for source in sorted(folder.rglob("*.py")):
            relative = source.relative_to(root)
            if "venv" in relative.parts or (rule.package == "policy" and "tests" in relative.parts):
                continue
            for line, module in imports(source, root):
                if rule.breaks(module):
                    found.append(f"{relative}:{line}: imports {module}; {rule.package}/: {rule.why}")
    return found


def test_no_package_imports_what_its_rule_forbids() -> None:
    assert violations(PROJECT_DIR) == []


@pytest.mark.parametrize(
    ("path", "code", "module"),
    [
        ("handler/work.py", "import pulumi\n", "pulumi"),
        ("handler/work.py", "def later():\n    from components.settings import Settings\n", "components.settings"),
        ("taskclient/send.py", "from localcloud import stack\n", "localcloud"),
        ("taskclient/send.py", "import pulumi_gcp as gcp\n", "pulumi_gcp"),
        ("components/queue.py", "from ..handler import environment\n", "handler"),
        ("components/queue.py", "import importlib\nimportlib.import_module('taskclient.cli')\n", "taskclient.cli"),
        ("contract/limits.py", "import yaml\n", "yaml"),
        ("contract/limits.py", "from google.protobuf import duration_pb2\n", "google.protobuf"),
        ("policy/guardrails/iam.py", "from components import settings\n", "components"),
        ("policy/guardrails/iam.py", "from handler.environment import HandlerSettings\n", "handler.environment"),
    ],
)
def test_a_planted_import_is_named_with_its_file_line_and_rule(
    tmp_path: Path, path: str, code: str, module: str
) -> None:
    planted = tmp_path / path
    planted.parent.mkdir(parents=True)
    planted.write_text("from __future__ import annotations\n" + code)
    (found,) = violations(tmp_path)
    package = path.split("/")[0]
    assert found.startswith(f"{path}:{code.count(chr(10)) + 1}: imports {module}; {package}/: ")
    assert next(r for r in RULES if r.package == package).why in found


def test_what_each_rule_allows_is_not_reported(tmp_path: Path) -> None:
    allowed = {
        "handler/work.py": "from contract import handler_env\nimport starlette\n",
        "taskclient/send.py": "from contract.outputs import StackOutputs\nfrom google.cloud import tasks_v2\n",
        "components/queue.py": "import pulumi_gcp\nfrom contract import cloud_tasks\n",
        "contract/limits.py": "import json\nfrom .cloud_tasks import TASK_ID\n",
        "policy/guardrails/iam.py": "from contract import handler_env\nfrom guardrails import tokens\n",
    }
    for path, code in allowed.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(code)
    assert violations(tmp_path) == []


def test_the_handler_environment_names_are_written_in_contract_only() -> None:
    """Outside tests, each TASKS_* variable name is a literal in one place: contract/handler_env.py."""
    places = []
    for source in sorted(PROJECT_DIR.rglob("*.py")):
        relative = source.relative_to(PROJECT_DIR)
        if "venv" in relative.parts or "tests" in relative.parts:
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                places.append(f"{relative}: {node.value}")
    assert places == [
        f"contract/handler_env.py: {name}"
        for name in (
            "TASKS_QUEUES",
            "TASKS_DEAD_LETTER_QUEUE",
            "TASKS_INVOKER_EMAILS",
            "TASKS_VERIFY_OIDC",
            "TASKS_OIDC_AUDIENCE",
            "TASKS_OIDC_CERTS_URL",
            "TASKS_IDEMPOTENCY_REDIS_URL",
        )
    ]
