"""Local mode on the command line: `python -m localcloud <command>`, one function per command.

python -m localcloud emulator --port 8123 [--http-port 8124] [--task-tombstone-ttl 3600] [--latency-ms 0] [--workers 16]
                              [--console-port 8125] [--outputs .localcloud/outputs.json] [--data-dir DIR]
python -m localcloud up [--stack dev] [--outputs .localcloud/outputs.json] [--emulator-port P] [--handler-port P]
                        [--console-port 8125] [--data-dir .localcloud/state] [--fresh]
python -m localcloud demo [--stack dev]

The emulator keeps its state in memory, or with --data-dir in SQLite in DIR, where a restart finds it again
(queues, tasks with their retry state, name tombstones, the signing key: localcloud/emulator/store.py). `up`
always uses a data dir: `state/` beside --outputs (.localcloud/state), or --data-dir; --fresh empties it
first. `demo` keeps nothing: it runs in memory, independent of any earlier run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from taskclient.interrupts import stop_on_signals

__all__ = ["build_parser", "main", "run_emulator"]


def run_emulator(args: argparse.Namespace) -> int:
    """Serve the Cloud Tasks emulator on 127.0.0.1 until SIGTERM or SIGINT; print one ready line first."""
    from localcloud.emulator.service import CloudTasksEmulator
    from localcloud.emulator.store import DataDirInUse, StoreError, UnreadableDataDir

    stop = stop_on_signals()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        emulator = CloudTasksEmulator(
            port=args.port,
            http_port=args.http_port,
            task_tombstone_ttl=args.task_tombstone_ttl,
            workers=args.workers,
            console_port=args.console_port,
            outputs_path=args.outputs,
            data_dir=args.data_dir,
        )
        emulator.faults.latency = args.latency_ms / 1000
        emulator.start()
    except UnreadableDataDir as error:
        remedy = f"delete {args.data_dir} to start empty, or choose another --data-dir"
        print(f"emulator: cannot start: {error}: {remedy}", file=sys.stderr)
        return 2
    except DataDirInUse as error:
        print(f"emulator: cannot start: {error}: stop it, or choose another --data-dir", file=sys.stderr)
        return 2
    except StoreError as error:
        print(f"emulator: cannot start: {error}: choose another --data-dir", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as error:  # ValueError: a latency of NaN
        print(f"emulator: cannot start: {error}", file=sys.stderr)
        return 2
    try:
        http = f" http={emulator.oidc_url}" if emulator.oidc_url else ""
        console = f" console={emulator.console_url}" if emulator.console_url else ""
        print(f"emulator ready grpc={emulator.address}{http}{console}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        emulator.stop()
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..65535 (0: any free port)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m localcloud", description="Run the stack on this machine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulator = commands.add_parser("emulator", help="serve the Cloud Tasks gRPC API on 127.0.0.1 and dispatch tasks")
    emulator.add_argument("--port", type=int, default=8123, help="gRPC port on 127.0.0.1 (0: a free one; default 8123)")
    emulator.add_argument(
        "--http-port", type=int, default=None, help="also serve the OIDC signing keys over HTTP on this port"
    )
    emulator.add_argument(
        "--task-tombstone-ttl",
        type=_non_negative,
        default=3600.0,
        metavar="SECONDS",
        help="how long a finished or deleted task's name stays reserved (default 3600; 0: not at all)",
    )
    emulator.add_argument(
        "--latency-ms",
        type=_non_negative,
        default=0.0,
        metavar="MS",
        help="answer every gRPC call this much later, as a network round trip would (benchmarks; default 0)",
    )
    emulator.add_argument(
        "--workers",
        type=_positive_int,
        default=16,
        metavar="N",
        help="gRPC worker threads, the most calls handled at once (default 16); with --latency-ms, use at least"
        " as many as the calls a client keeps in flight",
    )
    emulator.add_argument(
        "--console-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="also serve the web console on 127.0.0.1 on this port (0: a free one; default: no console)",
    )
    emulator.add_argument(
        "--outputs",
        type=Path,
        default=None,
        metavar="PATH",
        help="the stack outputs file (`localcloud up` writes it), read when the console replays a dead letter",
    )
    emulator.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep queues, tasks, tombstones and the signing key in SQLite in DIR, across restarts (created if"
        " missing; default: in memory only)",
    )
    emulator.set_defaults(handler=run_emulator)

    up = commands.add_parser("up", help="evaluate the program offline and run the stack locally until Ctrl-C")
    up.add_argument("--stack", default="dev", help="the Pulumi.<stack>.yaml to use (default dev)")
    up.add_argument("--outputs", type=Path, default=OUTPUTS, help=f"where to write the outputs (default {OUTPUTS})")
    up.add_argument("--emulator-port", type=int, default=8123, help="gRPC port of the emulator (default 8123)")
    up.add_argument("--handler-port", type=int, default=8080, help="port of the task handler (default 8080)")
    up.add_argument("--http-port", type=int, default=8124, help="port of the token signing keys (default 8124)")
    up.add_argument(
        "--console-port",
        type=_port,
        default=8125,
        metavar="PORT",
        help="port of the emulator's web console on 127.0.0.1 (0: a free one; default 8125)",
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the emulator keeps its state between runs (default: state/ beside --outputs, i.e."
        f" {OUTPUTS.parent / STATE_DIR})",
    )
    up.add_argument(
        "--fresh", action="store_true", help="start empty: delete the emulator's state in the data dir first"
    )
    up.set_defaults(handler=run_up)

    demo = commands.add_parser("demo", help="run the stack on free ports, send tasks, print what became of them")
    demo.add_argument("--stack", default="dev", help="the Pulumi.<stack>.yaml to use (default dev)")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every task (default 120)")
    demo.set_defaults(handler=run_demo)

    resources = commands.add_parser("resources", help="print the resources the program registers, as JSON")
    resources.add_argument("--stack", default="dev", help="the Pulumi.<stack>.yaml to use (default dev)")
    resources.set_defaults(handler=run_resources)
    return parser


OUTPUTS = Path(".localcloud/outputs.json")
STATE_DIR = "state"  # up's data dir, beside its outputs: one .localcloud holds one local stack


def run_up(args: argparse.Namespace) -> int:
    from localcloud.stack import LocalStackError
    from localcloud.up import run_up as serve

    try:
        return serve(
            args.stack,
            args.outputs.resolve(),
            emulator_port=args.emulator_port,
            handler_port=args.handler_port,
            http_port=args.http_port,
            console_port=args.console_port,
            data_dir=(args.data_dir or args.outputs.parent / STATE_DIR).resolve(),
            fresh=args.fresh,
        )
    except LocalStackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_resources(args: argparse.Namespace) -> int:
    """The mocked run's registrations (type, inputs, options, dependencies), for the policy pack's tests."""
    import json

    from localcloud.program import ProgramError, evaluate
    from localcloud.stack import LocalStackError, stack_config

    try:
        run = evaluate(stack_config(args.stack), stack=args.stack)
    except LocalStackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ProgramError as error:
        print(f"error: Pulumi.{args.stack}.yaml: {error}", file=sys.stderr)
        return 2
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    json.dump(run.documents(), sys.stdout, indent=1, sort_keys=True, default=str)
    print()
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from localcloud.demo import run_demo as demo
    from localcloud.stack import LocalStackError

    try:
        return demo(args.stack, timeout=args.timeout)
    except LocalStackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
