"""`python -m taskclient send|bulk|dead-letters`: create tasks from the stack's outputs, and list, replay or
discard dead letters, from a shell or CI."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from contract.outputs import OUTPUTS_ENV, StackOutputsError
from taskclient import dead_letter_cli
from taskclient.errors import TaskClientError, UsageError
from taskclient.progress import progress_bar
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest, read_outputs_document

__all__ = ["UsageError", "duration", "main"]

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> timedelta:
    """ "30s", "1.5s", "10m", "2h", "1d"."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 10m, 2h or 1d")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


def main(argv: Sequence[str] | None = None, *, stdin: IO[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stdin = stdin or sys.stdin
    try:
        if args.command == dead_letter_cli.COMMAND:
            dead_letter_cli.check(args)
            return dead_letter_cli.run(args, _outputs(args.outputs, stdin))
        document = _outputs(args.outputs, stdin)
        with TaskPublisher.from_mapping(document) as publisher:
            if args.command == "send":
                return _send(publisher, args, stdin)
            return _bulk(publisher, args, stdin)
    except (UsageError, TaskClientError, StackOutputsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m taskclient", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    outputs_help = (
        "`pulumi stack output --json` document; '-' reads stdin. Default: $"
        f"{OUTPUTS_ENV}, else `pulumi stack output --json` in the current directory"
    )

    send = commands.add_parser("send", help="create one task and print its name")
    send.add_argument("--outputs", metavar="FILE", help=outputs_help)
    send.add_argument("--queue", metavar="NAME", help="short queue name (default: the stack's default queue)")
    send.add_argument("--path", help="path on the service, e.g. /tasks/resize (not for queue-level routing)")
    body = send.add_mutually_exclusive_group(required=True)
    body.add_argument("--json", metavar="JSON", help="the payload, as JSON text")
    body.add_argument("--data-file", metavar="FILE", help="the payload file, sent as it is ('-' reads stdin)")
    when = send.add_mutually_exclusive_group()
    when.add_argument("--delay", type=duration, help="dispatch after this long, e.g. 30s or 10m")
    name = send.add_mutually_exclusive_group()
    name.add_argument("--name", metavar="ID", help="task id; a second task of the same id is refused as a duplicate")
    name.add_argument("--dedupe-key", metavar="KEY", help="derive the task id from this key (hashed)")
    send.add_argument("--deadline", type=duration, help="dispatch deadline, 15s-30m (default: the queue's)")
    send.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="extra request header (repeatable)"
    )

    bulk = commands.add_parser("bulk", help="create one task per line of a JSON Lines file")
    bulk.add_argument("--outputs", metavar="FILE", help=outputs_help)
    bulk.add_argument("--file", required=True, metavar="FILE", help="one JSON payload per line ('-' reads stdin)")
    bulk.add_argument("--queue", metavar="NAME", help="short queue name (default: the stack's default queue)")
    bulk.add_argument("--concurrency", type=int, default=32, help="CreateTask calls in flight (default 32)")
    bulk.add_argument(
        "--dedupe-field",
        metavar="FIELD",
        help="derive each task's id from this field of its payload, so a rerun of the file creates nothing twice",
    )

    dead_letter_cli.add_parser(commands, outputs_help)
    return parser


def _outputs(option: str | None, stdin: IO[str]) -> dict[str, Any]:
    if option is not None:
        return read_outputs_document(option, stdin)
    if os.environ.get(OUTPUTS_ENV):
        return read_outputs_document("-", io.StringIO(os.environ[OUTPUTS_ENV]))
    if shutil.which("pulumi"):
        done = subprocess.run(
            ["pulumi", "stack", "output", "--json"], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise UsageError(f"`pulumi stack output --json` failed: {done.stderr.strip()}")
        return read_outputs_document("-", io.StringIO(done.stdout))
    raise UsageError(f"no stack outputs: pass --outputs FILE (or '-'), set {OUTPUTS_ENV}, or install the Pulumi CLI")


def _stdin_bytes(stdin: IO[str]) -> bytes:
    """Standard input as it came: its bytes, not text decoded and encoded again."""
    buffer = getattr(stdin, "buffer", None)
    return bytes(buffer.read()) if buffer is not None else stdin.read().encode()


def _send(publisher: TaskPublisher, args: argparse.Namespace, stdin: IO[str]) -> int:
    if args.data_file is not None:
        payload: Any = _stdin_bytes(stdin) if args.data_file == "-" else _read_bytes(args.data_file)
    else:
        try:
            payload = json.loads(args.json)
        except ValueError as err:
            raise UsageError(f"--json: not JSON ({err})") from None
    name = publisher.publish(
        payload,
        queue=args.queue,
        path=args.path,
        delay=args.delay,
        name=args.name,
        dedupe_key=args.dedupe_key,
        deadline=args.deadline,
        headers=_header_map(args.header),
    )
    print(name)
    return 0


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"--data-file {path}: {err.strerror}") from None


def _header_map(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        key, sep, rest = value.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"--header {value!r}: expected NAME:VALUE")
        headers[key.strip()] = rest.strip()
    return headers


def _bulk(publisher: TaskPublisher, args: argparse.Namespace, stdin: IO[str]) -> int:
    if args.file == "-" and args.outputs == "-":
        raise UsageError("--file - and --outputs - cannot both read standard input")
    line_numbers: list[int] = []
    requests: list[TaskRequest] = []
    failures: list[tuple[int, str]] = []  # (line number, reason): a bad line is reported, never dropped
    for number, text in _lines(args.file, stdin):
        try:
            request = _bulk_request(json.loads(text), args)
        except (ValueError, UsageError) as err:
            failures.append((number, f"not a task: {err}"))
            continue
        line_numbers.append(number)
        requests.append(request)

    console = Console(stderr=True)
    started = time.perf_counter()
    with progress_bar(console, len(requests), "creating tasks") as advance:
        results = publisher.publish_many(requests, concurrency=args.concurrency, on_result=lambda _: advance())
    elapsed = time.perf_counter() - started

    counts = Counter(result.outcome for result in results)
    failures += [(line_numbers[r.index], r.error or "failed") for r in results if r.outcome is Outcome.FAILED]
    for number, reason in sorted(failures):
        console.print(f"line {number}: {reason}", markup=False, highlight=False, soft_wrap=True)
    done = counts[Outcome.CREATED] + counts[Outcome.DUPLICATE]
    print(
        f"created {counts[Outcome.CREATED]}, duplicates {counts[Outcome.DUPLICATE]}, failed {len(failures)},"
        f" {done / elapsed if elapsed > 0 else 0.0:.0f} tasks/s"
    )
    return 1 if failures else 0


def _lines(path: str, stdin: IO[str]) -> Iterator[tuple[int, str]]:
    try:
        handle = stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as err:
        raise UsageError(f"--file {path}: {err.strerror}") from None
    with handle if handle is not stdin else contextlib.nullcontext(handle):
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, text


def _bulk_request(payload: Any, args: argparse.Namespace) -> TaskRequest:
    dedupe_key = None
    if args.dedupe_field is not None:
        if not isinstance(payload, dict) or args.dedupe_field not in payload:
            raise UsageError(f"no field {args.dedupe_field!r} to derive the task id from")
        dedupe_key = json.dumps(payload[args.dedupe_field], sort_keys=True)
    return TaskRequest(payload, queue=args.queue, dedupe_key=dedupe_key)
