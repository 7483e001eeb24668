"""The benchmarks' own guards, untimed: a benchmark that compares against a reference must stay comparable.

benchmarks/program.py compares the program with benchmarks/minimal_program.py, which must register the same
resources with inputs of the same shape. When the program gained resources and the reference did not, the
benchmark stopped at its check and `make bench` failed; nothing in the suite noticed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
PROGRAM_BENCHMARK = ROOT / "benchmarks" / "program.py"


def program_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("program_benchmark", PROGRAM_BENCHMARK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_minimal_program_registers_what_the_program_registers() -> None:
    command = [sys.executable, str(PROGRAM_BENCHMARK), "--check", "--queues", "1,3"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("of the same shapes, in both") == 2


def test_the_shape_check_names_an_input_only_one_program_sets() -> None:
    bench = program_benchmark()
    real = {"project": "p", "severity": "ERROR", "conditions": [{"filter": "a", "duration": "300s"}]}
    minimal = {"project": "q", "conditions": [{"filter": "b", "duration": "60s"}]}
    alert = "gcp:monitoring/alertPolicy:AlertPolicy"

    def shapes(*inputs: dict[str, object]) -> list[list[str]]:
        return [[alert, bench.json.dumps(bench.shape(i))] for i in inputs]

    assert bench.shape_difference(shapes(real), shapes({**real, "project": "other"})) is None
    difference = bench.shape_difference(shapes(real), shapes(minimal))
    assert (
        difference
        == f"{alert}: inputs of another shape; only the real program sets ['.severity: str'], only the minimal one []"
    )
    longer = {**real, "conditions": [*real["conditions"], {"filter": "c", "duration": "1s"}]}  # type: ignore[list-item]
    assert "'.conditions[1].filter: str'" in bench.shape_difference(shapes(longer), shapes(real))
