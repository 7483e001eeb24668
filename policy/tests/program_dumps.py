"""The program's own resources, dumped by the program's environment, as the analyzer would hand them over.

`make policy` writes one dump per stack with `venv/bin/python -m localcloud resources --stack STACK` (the real
`__main__.py` under Pulumi's mocks, in the program's virtualenv: this one cannot import pulumi-gcp's protobuf)
and passes their paths in POLICY_RESOURCE_DUMPS (whitespace-separated). Run directly, the tests read the same
files from where `make policy` writes them. A missing dump fails the tests: it never skips them.

A dump holds each resource's inputs. Resource policies get exactly that; stack policies get the resources'
outputs in a real run, which echo these inputs and add computed fields (a service's `uri`), which is why the
stack rule also links a queue to its service through the engine's property dependencies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from policy_args import options
from pulumi_policy import PolicyResource, ResourceValidationArgs
from pulumi_policy.proxy import unknown_checking_proxy

ENV = "POLICY_RESOURCE_DUMPS"
STACKS = ("dev", "prod")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".localcloud" / "policy"

Record = dict[str, Any]


def dump_path(stack: str) -> Path:
    listed = os.environ.get(ENV)
    paths = {Path(p).stem: Path(p) for p in listed.split()} if listed else {stack: DEFAULT_DIR / f"{stack}.json"}
    path = paths.get(stack)
    if path is None or not path.is_file():
        where = f"{ENV}={listed!r}" if listed else f"{DEFAULT_DIR}"
        pytest.fail(
            f"no resource dump for stack {stack!r} (looked in {where}). Run `make policy` from the repository root: "
            f"it writes each stack's dump with the program's virtualenv (venv/bin/python -m localcloud resources "
            f"--stack {stack}) and runs these tests.",
            pytrace=False,
        )
    return path


def load(stack: str) -> list[Record]:
    records = json.loads(dump_path(stack).read_text())
    assert isinstance(records, list), f"{dump_path(stack)} is not a list of resources"
    return records


def resource_args(record: Record) -> ResourceValidationArgs:
    """What `Analyze` builds for one registration (pulumi_policy/policy.py), from a dump record."""
    opts = options(record.get("parent"), bool(record.get("protect")), list(record.get("ignoreChanges") or []))
    props = unknown_checking_proxy(record["inputs"])
    return ResourceValidationArgs(record["type"], props, record["urn"], record["name"], opts, None)


def stack_resources(records: list[Record]) -> list[PolicyResource]:
    """What `AnalyzeStack` builds: resources with parent, dependencies and property dependencies linked."""
    by_urn = {
        r["urn"]: PolicyResource(
            r["type"],
            unknown_checking_proxy(r["inputs"]),
            r["urn"],
            r["name"],
            options(r.get("parent"), bool(r.get("protect")), list(r.get("ignoreChanges") or [])),
            None,
            None,
            [],
            {},
        )
        for r in records
    }
    for record in records:
        resource = by_urn[record["urn"]]
        resource.parent = by_urn.get(record.get("parent") or "")
        resource.dependencies = [by_urn[u] for u in record["dependencies"] if u in by_urn]
        resource.property_dependencies = {
            key: [by_urn[u] for u in urns if u in by_urn] for key, urns in record["propertyDependencies"].items()
        }
    return list(by_urn.values())
