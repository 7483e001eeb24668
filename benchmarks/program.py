"""Program evaluation: time and peak memory of __main__.py under Pulumi's mocks, against a hand-written baseline.

    venv/bin/python benchmarks/program.py [--repeat 5] [--queues 1,10,100] [--profile] [--check]

Both programs run through `localcloud.program.evaluate` (the mocks the tests use, with `SimulatedGcp`)
with the dev stack's config and its `queues` replaced by N generated queues, q0..qN-1, each with a
retry and a rate setting. Contenders:
  real     __main__.py: settings validation, the component resources, the stack outputs
  minimal  benchmarks/minimal_program.py: a flat pulumi-gcp script creating the same GCP resources

Before anything is timed, one run of each per N checks that both register the same resource types in the
same counts (every registration but the real program's own component resources, which are its overhead),
each with inputs of the same shape (the same keys, nested alike, the same list lengths, leaves of the
same kind; `shape()`): both send the engine the same work, and only the values differ. The benchmark
stops, naming the input paths, if they differ. Those runs also fill the children's bytecode cache
(`child_env()`), so the timed runs load compiled modules, as any run after a program's first does. Every
measurement is then a fresh interpreter, so each pays its own imports, starts from empty Pulumi runtime
state, and has its own peak RSS. The parent has the stack file's config read once (in a child of its own,
to stay small) and hands it to each child on stdin; the child imports localcloud.program (pulumi)
untimed, then times `evaluate()` with perf_counter: that includes the program's own first imports
(pulumi_gcp's modules, components/), running it, and collecting the registrations. The N values and both
programs are interleaved in each repetition, in alternating order, so drift on a shared machine falls on
all alike; each cell is the median of --repeat runs.

Peak memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss` read in the child after the run: the
process's high-water mark, so it counts C allocations too (protobuf structs the mock monitor builds,
gRPC), costs nothing while the timed run goes, and so comes from the same run as the time. tracemalloc
would see only Python's allocator and slow every allocation, so it would need separate untimed runs.
The figure includes the interpreter and localcloud.program's imports, the same in both (shown below the
table).

Cost per queue is the marginal cost between two sizes: (ms(10) - ms(1)) / 9 and (ms(100) - ms(10)) / 90,
which cancels the fixed cost (imports, the service, the accounts). It is called flat when the 10->100
figure is at most FLAT_FACTOR (1.5) times the 1->10 one. Linear cost gives 1.0, a purely quadratic one
10 ((100^2 - 10^2) / 90 against (10^2 - 1) / 9). 1.5 leaves room for the noise of the small 1->10 step
(repeated runs here gave 0.9x to 1.4x for the same code) and flags a quadratic term once, at N=100, it
costs about half as much as the linear work. When the real program is not flat (or with --profile), it
runs under cProfile at the two largest sizes and the functions whose time grows fastest are listed.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import functools
import gc
import itertools
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROGRAMS = {"real": ROOT / "__main__.py", "minimal": Path(__file__).resolve().parent / "minimal_program.py"}
FLAT_FACTOR = 1.5
# Simple settings every generated queue gets: enough to fill the queue's retry and rate arguments.
# The retry window outlasts IAM propagation (420 s), as settings require.
QUEUE_SETTINGS = {"retry": {"maxAttempts": 5, "maxRetryDuration": "600s"}, "rateLimits": {"maxDispatchesPerSecond": 10}}
COMPONENT_PREFIX = "cloudrun-tasks:"
OLDEST_GENERATION = 2  # CPython's collector has three


@functools.cache
def stack_file_config() -> dict[str, str]:
    """The dev stack's config as the CLI passes it (localcloud.stack.stack_config), read in a child process.

    Importing localcloud.stack here would grow this process by some 30 MiB, and a child's ru_maxrss starts
    at its parent's (the peak survives fork and execve), which would hide the children's own peaks.
    """
    code = "import json, sys; from localcloud.stack import stack_config; json.dump(stack_config('dev'), sys.stdout)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"could not read the dev stack's config:\n{done.stderr}")
    config: dict[str, str] = json.loads(done.stdout)
    return config


def queue_config(queues: int) -> dict[str, str]:
    """The dev stack's config, as the CLI passes it, with `queues` q0..q{N-1}."""
    queue_map = {f"q{n}": QUEUE_SETTINGS for n in range(queues)}
    return {**stack_file_config(), "cloudrun-tasks:queues": json.dumps(queue_map)}


# --- child: one evaluation in a fresh interpreter ---------------------------------------------


class CollectorClock:
    """The cyclic garbage collector's time within the timed run, and its full (oldest-generation) collections:
    a full one walks every tracked object, the import-time heap of pulumi, grpc and protobuf included, so one
    more of them is a step in the wall time that the programs' own work does not show."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.full += info["generation"] == OLDEST_GENERATION


def child(program: str, profile_to: str | None) -> None:
    from localcloud.program import PROJECT_NAME, evaluate

    config = json.load(sys.stdin)  # from the parent, so reading the stack file is no part of the child
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    collections = CollectorClock()
    gc.callbacks.append(collections.callback)
    profiler = cProfile.Profile() if profile_to else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    run = evaluate(config, stack="dev", program=PROGRAMS[program], project=PROJECT_NAME)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - started
    gc.callbacks.remove(collections.callback)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if profiler and profile_to:
        profiler.dump_stats(profile_to)
    types = Counter(r.type for r in run.resources)
    shapes = sorted([r.type, json.dumps(shape(r.inputs))] for r in run.resources if not is_component(r.type))
    result = {
        "ms": 1000 * elapsed,
        "gc_ms": 1000 * collections.seconds,
        "full_collections": collections.full,
        "before_kib": before_kib,
        "peak_kib": peak_kib,
        "types": types,
        "shapes": shapes,
    }
    print(json.dumps(result))


# --- parent -------------------------------------------------------------------------------------


@functools.cache
def child_env() -> dict[str, str]:
    """The children's environment: bytecode cached in a directory of the benchmark's own.

    The first child to import a module compiles it and caches it there (the untimed check runs first), so
    timed children load bytecode, as a program's second run does on a user's machine. Without this, a
    PYTHONDONTWRITEBYTECODE=1 in the environment (this machine sets it) would have every child compile the
    project's own modules from source while pulumi_gcp's come compiled from the install: a cost of the
    environment that falls on the real program alone.
    """
    cache = tempfile.mkdtemp(prefix="program-bench-pycache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": cache}


def measure(program: str, queues: int, profile_to: str | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", program]
    if profile_to:
        command += ["--profile-to", profile_to]
    config = json.dumps(queue_config(queues))
    done = subprocess.run(command, input=config, capture_output=True, text=True, cwd=ROOT, env=child_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"{program} with {queues} queues failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def is_component(resource_type: str) -> bool:
    return resource_type.startswith(COMPONENT_PREFIX)


def shape(value: Any) -> Any:
    """The structure of a resource's inputs with the values left out: every key, every list's length, and
    each leaf's kind. Two programs whose resources have the same shapes send the engine the same work."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [shape(item) for item in value]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def leaf_paths(value: Any, path: str = "") -> set[str]:
    """Each leaf of a shape as "path: kind"."""
    if isinstance(value, dict):
        return {p for key, item in value.items() for p in leaf_paths(item, f"{path}.{key}")}
    if isinstance(value, list):
        return {p for i, item in enumerate(value) for p in leaf_paths(item, f"{path}[{i}]")}
    return {f"{path}: {value}"}


def shape_difference(real: list[list[str]], minimal: list[list[str]]) -> str | None:
    """None when both programs register resources of the same shapes; else the first type that differs, with
    the input paths only one of the two programs sets."""
    real_shapes, minimal_shapes = Counter(map(tuple, real)), Counter(map(tuple, minimal))
    if real_shapes == minimal_shapes:
        return None
    only_real, only_minimal = real_shapes - minimal_shapes, minimal_shapes - real_shapes
    resource_type = min(t for t, _ in (*only_real, *only_minimal))
    mine = set().union(*(leaf_paths(json.loads(s)) for t, s in only_real if t == resource_type))
    theirs = set().union(*(leaf_paths(json.loads(s)) for t, s in only_minimal if t == resource_type))
    return (
        f"{resource_type}: inputs of another shape; only the real program sets {sorted(mine - theirs)},"
        f" only the minimal one {sorted(theirs - mine)}"
    )


def split_types(types: dict[str, int]) -> tuple[Counter[str], Counter[str]]:
    """(resources both programs must register, the real program's component resources)."""
    resources = Counter({t: c for t, c in types.items() if not is_component(t)})
    components = Counter({t: c for t, c in types.items() if is_component(t)})
    return resources, components


def check_same_resources(sizes: list[int]) -> dict[int, Counter[str]]:
    """N -> the resource type counts both programs register; stops the benchmark if they differ."""
    print("Checking both programs register the same resources (one untimed run of each per N)")
    expected = {}
    for queues in sizes:
        real_run, minimal_run = measure("real", queues), measure("minimal", queues)
        real, components = split_types(real_run["types"])
        minimal, extra = split_types(minimal_run["types"])
        if real != minimal or extra:
            diff = {t: (real[t], minimal[t]) for t in sorted(set(real) | set(minimal)) if real[t] != minimal[t]}
            raise SystemExit(f"N={queues}: type counts differ (real, minimal): {diff}")
        difference = shape_difference(real_run["shapes"], minimal_run["shapes"])
        if difference:
            raise SystemExit(f"N={queues}: {difference}")
        print(
            f"  N={queues:<4} {sum(real.values()):>4} resources of {len(real)} types, of the same shapes, in both;"
            f" the real program adds {sum(components.values())} component resources"
        )
        expected[queues] = real
    return expected


def median(values: list[float]) -> float:
    return statistics.median(values)


def marginal(ms: dict[int, float], low: int, high: int) -> float:
    return (ms[high] - ms[low]) / (high - low)


def profile(sizes: list[int], top: int) -> None:
    """The real program under cProfile at the two largest sizes: which functions' time grows fastest."""
    low, high = sizes[-2], sizes[-1]
    stats = {}
    with tempfile.TemporaryDirectory() as tmp:
        for queues in (low, high):
            path = os.path.join(tmp, f"{queues}.prof")
            measure("real", queues, profile_to=path)
            stats[queues] = pstats.Stats(path).stats  # type: ignore[attr-defined]
    total = {n: sum(entry[2] for entry in stats[n].values()) for n in stats}
    print(f"\ncProfile of the real program, N={low} and N={high} (profiler overhead inflates every figure)")
    print(f"total own time: {1000 * total[low]:.0f} ms and {1000 * total[high]:.0f} ms")
    print(f"Functions by own-time growth {low}->{high}, per added queue; calls x = call count ratio")
    print(f"{'ms/queue':>9}{'share':>7}{'calls ' + str(low):>12}{'calls ' + str(high):>12}{'calls x':>9}  function")
    growth = []
    for key, (_, calls_high, tottime_high, _, _) in stats[high].items():
        calls_low, tottime_low = (stats[low][key][1], stats[low][key][2]) if key in stats[low] else (0, 0.0)
        growth.append((tottime_high - tottime_low, calls_low, calls_high, key))
    added = total[high] - total[low]
    for delta, calls_low, calls_high, (file, line, name) in sorted(growth, reverse=True)[:top]:
        where = f"{_short_path(file)}:{line}({name})"
        ratio = f"{calls_high / calls_low:.1f}" if calls_low else "new"
        per_queue = 1000 * delta / (high - low)
        print(f"{per_queue:>9.3f}{100 * delta / added:>6.0f}%{calls_low:>12}{calls_high:>12}{ratio:>9}  {where}")
    print_work_per_queue(low, high)
    print(f"\nCumulative time at N={high} (top {top}):")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "high.prof")
        measure("real", high, profile_to=path)
        pstats.Stats(path).sort_stats("cumulative").print_stats(top)


# Pulumi SDK calls whose count per added queue is the program's work in the runtime: each apply, all and
# from_input of an Output is a future and an asyncio task; each registration (and register_outputs) is an RPC.
COUNTED_CALLS = {
    "Output.apply": ("pulumi/output.py", "apply"),
    "Output.all": ("pulumi/output.py", "all"),
    "Output.from_input": ("pulumi/output.py", "from_input"),
    "asyncio tasks": ("asyncio/base_events.py", "create_task"),
    "registrations": ("pulumi/runtime/resource.py", "register_resource"),
    "register_outputs": ("pulumi/runtime/resource.py", "register_resource_outputs"),
}


def print_work_per_queue(low: int, high: int) -> None:
    """Calls per added queue of the SDK functions in COUNTED_CALLS, both programs, from one profiled run each:
    counts, unlike times, do not drift with the load on the machine."""
    per_queue = {}
    with tempfile.TemporaryDirectory() as tmp:
        for program in PROGRAMS:
            counts = {}
            for queues in (low, high):
                path = os.path.join(tmp, f"{program}-{queues}.prof")
                measure(program, queues, profile_to=path)
                counts[queues] = _counted_calls(pstats.Stats(path).stats)  # type: ignore[attr-defined]
            per_queue[program] = {
                name: (counts[high][name] - counts[low][name]) / (high - low) for name in COUNTED_CALLS
            }
    print(f"\nSDK calls per added queue ({low}->{high}; counts, so free of the machine's load)")
    print(f"{'call':<20}{'real':>8}{'minimal':>9}{'real/min':>10}")
    for name in COUNTED_CALLS:
        real, minimal = per_queue["real"][name], per_queue["minimal"][name]
        ratio = f"{real / minimal:.2f}" if minimal else "-"
        print(f"{name:<20}{real:>8.1f}{minimal:>9.1f}{ratio:>10}")


def _counted_calls(stats: dict[tuple[str, int, str], tuple[Any, ...]]) -> dict[str, int]:
    return {
        name: sum(entry[1] for (file, _, function), entry in stats.items() if file.endswith(suffix) and function == fn)
        for name, (suffix, fn) in COUNTED_CALLS.items()
    }


def _short_path(file: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell; the median is shown (default 5)")
    parser.add_argument("--queues", default="1,10,100", help="queue counts, comma-separated (default 1,10,100)")
    parser.add_argument("--profile", action="store_true", help="profile the real program even if it is flat")
    parser.add_argument("--top", type=int, default=15, help="functions listed by the profile (default 15)")
    parser.add_argument("--check", action="store_true", help="only check that both register the same resources")
    parser.add_argument("--child", choices=sorted(PROGRAMS), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.queues.split(","))
    if args.child:
        child(args.child, args.profile_to)
        return
    if len(sizes) < 2:
        parser.error("--queues needs at least two sizes")

    expected = check_same_resources(sizes)
    if args.check:
        return
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(p, n): [] for p in PROGRAMS for n in sizes}
    for rep in range(args.repeat):
        order = list(PROGRAMS) if rep % 2 == 0 else list(reversed(PROGRAMS))
        for queues in sizes:
            for program in order:
                result = measure(program, queues)
                if split_types(result["types"])[0] != expected[queues]:
                    raise SystemExit(f"{program}, N={queues}: registered other resources than in the check")
                runs[program, queues].append(result)

    ms = {p: {n: median([r["ms"] for r in runs[p, n]]) for n in sizes} for p in PROGRAMS}
    spread = {p: {n: _spread([r["ms"] for r in runs[p, n]]) for n in sizes} for p in PROGRAMS}
    peak = {p: {n: median([r["peak_kib"] for r in runs[p, n]]) / 1024 for n in sizes} for p in PROGRAMS}
    before = {p: median([r["before_kib"] for n in sizes for r in runs[p, n]]) / 1024 for p in PROGRAMS}

    print(f"\nProgram evaluation under Pulumi mocks, median of {args.repeat} fresh processes per cell")
    print(
        f"{'N':>5}{'real ms':>9}{'±%':>5}{'minimal ms':>12}{'±%':>5}{'real/min':>10}"
        f"{'real ms/queue':>15}{'real MiB':>10}{'minimal MiB':>13}"
    )
    for i, queues in enumerate(sizes):
        increment = f"{marginal(ms['real'], sizes[i - 1], queues):.2f}" if i else "-"
        print(
            f"{queues:>5}{ms['real'][queues]:>9.0f}{spread['real'][queues]:>5.0f}"
            f"{ms['minimal'][queues]:>12.0f}{spread['minimal'][queues]:>5.0f}"
            f"{ms['real'][queues] / ms['minimal'][queues]:>10.2f}{increment:>15}"
            f"{peak['real'][queues]:>10.1f}{peak['minimal'][queues]:>13.1f}"
        )
    print(
        "±% is (max - min) / median over the runs; real ms/queue is the marginal cost from the previous N."
        f"\nMiB is peak RSS (ru_maxrss); before evaluate() it is {before['real']:.1f} (real) and"
        f" {before['minimal']:.1f} (minimal): interpreter, pulumi and localcloud.program."
    )

    print_collections(sizes, runs)

    print("\nCost per added queue (marginal, from the medians)")
    print(f"{'step':<14}{'real ms':>9}{'minimal ms':>12}{'real/min':>10}")
    steps = list(itertools.pairwise(sizes))
    per_queue = {p: [marginal(ms[p], a, b) for a, b in steps] for p in PROGRAMS}
    for (a, b), real, minimal in zip(steps, per_queue["real"], per_queue["minimal"], strict=True):
        print(f"{f'{a}->{b}':<14}{real:>9.2f}{minimal:>12.2f}{real / minimal:>10.2f}")
    flat = {p: True for p in PROGRAMS}
    if len(steps) < 2:
        print("Flatness needs three sizes or more; not judged.")
    for p in PROGRAMS if len(steps) >= 2 else ():
        growth = per_queue[p][-1] / per_queue[p][0]
        flat[p] = growth <= FLAT_FACTOR
        verdict = "flat" if flat[p] else "NOT flat"
        print(
            f"{p:<8} {steps[-1][0]}->{steps[-1][1]} per queue is {growth:.2f}x the {steps[0][0]}->{steps[0][1]}"
            f" figure: {verdict} (limit {FLAT_FACTOR}x)"
        )
    print(f"\n{os.cpu_count()} cores; one child process at a time. {time.strftime('%Y-%m-%d')}")
    if args.profile or not flat["real"]:
        profile(sizes, args.top)


def print_collections(sizes: list[int], runs: dict[tuple[str, int], list[dict[str, Any]]]) -> None:
    """The collector's share of each cell: its time and full collections within the timed runs (medians), and
    the ratio of the programs' times with it left out. An attribution, not a figure to meet: the collector's
    work is the program's as much as any other."""
    print("\nGarbage collection within the timed runs (medians; full = collections of the oldest generation)")
    print(f"{'N':>5}{'real GC ms':>12}{'full':>6}{'minimal GC ms':>15}{'full':>6}{'real/min without GC':>21}")
    for queues in sizes:
        cells = {p: runs[p, queues] for p in PROGRAMS}
        gc_ms = {p: median([r["gc_ms"] for r in cells[p]]) for p in PROGRAMS}
        full = {p: median([r["full_collections"] for r in cells[p]]) for p in PROGRAMS}
        rest = {p: median([r["ms"] - r["gc_ms"] for r in cells[p]]) for p in PROGRAMS}
        print(
            f"{queues:>5}{gc_ms['real']:>12.0f}{full['real']:>6g}{gc_ms['minimal']:>15.0f}{full['minimal']:>6g}"
            f"{rest['real'] / rest['minimal']:>21.2f}"
        )


def _spread(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / median(values)


if __name__ == "__main__":
    main()
