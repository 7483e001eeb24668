"""`python -m taskclient send|bulk|buffer|dead-letters`: create tasks from the stack's outputs (`buffer` with
Cloud Tasks' BufferTask, on a queue with queue-level routing), and list, replay or discard dead letters, from a
shell or CI."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from contract.outputs import OUTPUTS_ENV, StackOutputsError
from taskclient import dead_letter_cli
from taskclient.buffer import TaskBuffer
from taskclient.errors import PublishError, TaskClientError, UsageError
from taskclient.interrupts import SignalFlag
from taskclient.progress import progress_bar
from taskclient.publisher import (
    MAX_SCHEDULE_AHEAD,
    Outcome,
    PublishResult,
    TaskPublisher,
    TaskRequest,
    read_outputs_document,
)

__all__ = ["UsageError", "duration", "main"]

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
_DUPLICATES_LISTED = 20  # lines named one by one in bulk's report of tasks that were there already
# The library's argument names, as this CLI's flags: a message tells a shell user what to type.
_FLAGS = {
    "payload": "--json/--data-file",
    "queue": "--queue",
    "path": "--path",
    "delay": "--delay",
    "name": "--name",
    "dedupe_key": "--dedupe-key",
    "headers": "--header",
    "deadline": "--deadline",
    "task_id": "--task-id",
    "concurrency": "--concurrency",
}
_ARGUMENT = re.compile(r"(^|; )(" + "|".join(_FLAGS) + r"): ")
_KEYWORDS = re.compile(r"\b(" + "|".join(_FLAGS) + r")=")


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
        if args.command == "buffer":
            return _buffer(document, args, stdin)
        if args.command == "send":
            with TaskPublisher.from_mapping(document) as publisher:
                return _send(publisher, args, stdin)
        # The input file is read (and refused, when it is wrong) before any connection or credential is needed.
        with _bulk_input(args, stdin) as source, TaskPublisher.from_mapping(document) as publisher:
            return _bulk(publisher, args, source)
    except PublishError as err:  # Cloud Tasks refused or failed the call
        print(f"error: {in_flags(str(err))}", file=sys.stderr)
        return 1
    except (UsageError, TaskClientError, StackOutputsError) as err:
        print(f"error: {in_flags(str(err))}", file=sys.stderr)
        return 2


def in_flags(message: str) -> str:
    """A library message with its argument names (`delay: ...`, `pass name= ...`) as this CLI's flags."""
    message = _ARGUMENT.sub(lambda m: f"{m[1]}{_FLAGS[m[2]]}: ", message)
    return _KEYWORDS.sub(lambda m: _FLAGS[m[1]], message)


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
    when.add_argument("--delay", help="dispatch after this long, e.g. 30s or 10m (at most 30d)")
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

    buffer = commands.add_parser(
        "buffer", help="create one task with BufferTask (queues with queue-level routing) and print its name"
    )
    buffer.add_argument("--outputs", metavar="FILE", help=outputs_help)
    buffer.add_argument("--queue", metavar="NAME", help="short queue name (default: the stack's default queue)")
    buffer_body = buffer.add_mutually_exclusive_group(required=True)
    buffer_body.add_argument("--json", metavar="JSON", help="the payload, as JSON text")
    buffer_body.add_argument("--data-file", metavar="FILE", help="the payload file, sent as it is ('-' reads stdin)")
    buffer.add_argument(
        "--task-id", metavar="ID", help="task id; a second task of the same id is refused as a duplicate"
    )

    dead_letter_cli.add_parser(commands, outputs_help)
    return parser


def _outputs(option: str | None, stdin: IO[str]) -> dict[str, Any]:
    if option is not None:
        return read_outputs_document(option, stdin)
    if os.environ.get(OUTPUTS_ENV):
        text = os.environ[OUTPUTS_ENV].strip()
        if not text.startswith("{") and Path(text).is_file():
            raise UsageError(
                f"{OUTPUTS_ENV} holds a path ({text}), not the outputs document: pass --outputs {text}, or set"
                f' {OUTPUTS_ENV}="$(cat {text})"'
            )
        return read_outputs_document("-", io.StringIO(text))
    if shutil.which("pulumi"):
        done = subprocess.run(
            ["pulumi", "stack", "output", "--json"], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise UsageError(f"`pulumi stack output --json` failed: {done.stderr.strip()}")
        return read_outputs_document("-", io.StringIO(done.stdout))
    raise UsageError(f"no stack outputs: pass --outputs FILE (or '-'), set {OUTPUTS_ENV}, or install the Pulumi CLI")


def _stdin_binary(stdin: IO[str]) -> IO[bytes]:
    """Standard input as it comes: its bytes, not text decoded and encoded again."""
    buffer: IO[bytes] | None = getattr(stdin, "buffer", None)
    return buffer if buffer is not None else io.BytesIO(stdin.read().encode())


def _send(publisher: TaskPublisher, args: argparse.Namespace, stdin: IO[str]) -> int:
    request = TaskRequest(
        _payload(args, stdin),
        queue=args.queue,
        path=args.path,
        delay=_delay(args.delay),
        name=args.name,
        dedupe_key=args.dedupe_key,
        deadline=args.deadline,
        headers=_header_map(args.header),
    )
    outcome, name = publisher.create(request)
    print(name)
    if outcome is Outcome.DUPLICATE:
        print(f"already exists: {name} (not sent again; the payload given now was not enqueued)", file=sys.stderr)
    return 0


def _buffer(document: dict[str, Any], args: argparse.Namespace, stdin: IO[str]) -> int:
    payload = _payload(args, stdin)
    with TaskBuffer.from_mapping(document) as buffer:
        outcome, name = buffer.buffer(payload, queue=args.queue, task_id=args.task_id)
    print(name)
    if outcome is Outcome.DUPLICATE:
        print(f"already exists: {name} (not sent again; the payload given now was not enqueued)", file=sys.stderr)
    return 0


def _payload(args: argparse.Namespace, stdin: IO[str]) -> Any:
    """--data-file's bytes, or --json's value."""
    if args.data_file is not None:
        return _stdin_binary(stdin).read() if args.data_file == "-" else _read_bytes(args.data_file)
    try:
        return json.loads(args.json)
    except ValueError as err:
        raise UsageError(f"--json: not JSON ({err})") from None


def _delay(text: str | None) -> timedelta | None:
    """--delay as a timedelta; a value out of range is refused in the unit it was written in."""
    if text is None:
        return None
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(f"--delay {text!r} is not a duration such as 30s, 10m, 2h or 1d")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds > MAX_SCHEDULE_AHEAD.total_seconds():
        raise UsageError(f"--delay {text} is more than 30d ahead (Cloud Tasks schedules at most 30 days ahead)")
    return timedelta(seconds=seconds)


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


def _bulk_input(args: argparse.Namespace, stdin: IO[str]) -> BulkInput:
    if args.file == "-" and args.outputs == "-":
        raise UsageError("--file - and --outputs - cannot both read standard input")
    return BulkInput.check(args.file, stdin)


class BulkInput:
    """bulk's --file, read twice and never held in memory: a first pass checks every line (a line that is not
    UTF-8 refuses the whole file, before anything is sent) and counts them, then `lines()` reads it again to send.
    Standard input, or a path that is not a regular file (a FIFO), cannot be read twice: the first pass copies it
    to a temporary file on disk, which the second reads."""

    def __init__(self, handle: IO[bytes], count: int) -> None:
        self._handle = handle
        self.count = count  # non-blank lines

    @classmethod
    def check(cls, path: str, stdin: IO[str]) -> BulkInput:
        try:
            given: IO[bytes] = _stdin_binary(stdin) if path == "-" else open(path, "rb")  # noqa: SIM115 - see close()
        except OSError as err:
            raise UsageError(f"--file {path}: {err.strerror}") from None
        regular = path != "-" and stat.S_ISREG(os.fstat(given.fileno()).st_mode)
        spool: IO[bytes] | None = None if regular else tempfile.TemporaryFile()  # noqa: SIM115 - see close()
        try:
            count = 0
            for number, raw in enumerate(given, start=1):
                if spool is not None:
                    spool.write(raw)
                if _decoded(raw, number, path).strip():
                    count += 1
        except BaseException:
            if spool is not None:
                spool.close()
            if path != "-":
                given.close()
            raise
        if spool is None:
            given.seek(0)
            return cls(given, count)
        if path != "-":
            given.close()
        spool.seek(0)
        return cls(spool, count)

    def lines(self) -> Iterator[tuple[int, str]]:
        """The non-blank lines, numbered, as they are read (the first pass refused any that is not UTF-8)."""
        for number, raw in enumerate(self._handle, start=1):
            text = raw.decode("utf-8", "replace")
            if text.strip():
                yield number, text

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> BulkInput:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _decoded(raw: bytes, number: int, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--file {path}: line {number} is not UTF-8 (byte 0x{raw[err.start]:02x} at column"
            f" {err.start + 1}); nothing was sent"
        ) from None


class BulkReport:
    """What bulk says about its lines, in line order, as results arrive (out of order, at most --concurrency
    apart), keeping only counts, the first duplicates and the results not yet in order: memory stays flat."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.created = 0
        self.duplicates: list[tuple[int, str]] = []  # the first _DUPLICATES_LISTED: (line, task name)
        self.duplicate_count = 0
        self.failed = 0
        self.sent = 0  # requests handed to the publisher, in line order
        self.last_sent: int | None = None  # the line of the last one
        self._lines: dict[int, int] = {}  # request index -> its line, until its result is reported
        self._results: dict[int, PublishResult] = {}  # results that arrived before an earlier one's
        self._held: dict[int, list[tuple[int, str]]] = {}  # n -> bad lines after request n-1, until it is reported
        self._next = 0  # the next request index to report

    def sending(self, number: int) -> None:
        self._lines[self.sent] = number
        self.sent += 1
        self.last_sent = number

    def bad_line(self, number: int, reason: str) -> None:
        if self._next == self.sent:
            self._fail(number, reason)
        else:
            self._held.setdefault(self.sent, []).append((number, reason))

    def result(self, result: PublishResult) -> None:
        self._results[result.index] = result
        while self._next in self._results:
            ready = self._results.pop(self._next)
            number = self._lines.pop(self._next)
            self._next += 1
            if ready.outcome is Outcome.CREATED:
                self.created += 1
            elif ready.outcome is Outcome.DUPLICATE:
                self.duplicate_count += 1
                if len(self.duplicates) < _DUPLICATES_LISTED:
                    self.duplicates.append((number, ready.name or ""))
            else:
                self._fail(number, in_flags(ready.error or "failed"))
            for held in self._held.pop(self._next, ()):
                self._fail(*held)

    def _fail(self, number: int, reason: str) -> None:
        self.failed += 1
        self.console.print(f"line {number}: {reason}", markup=False, highlight=False, soft_wrap=True)


def _bulk(publisher: TaskPublisher, args: argparse.Namespace, source: BulkInput) -> int:
    console = Console(stderr=True)
    report = BulkReport(console)
    stop = SignalFlag()
    lines = source.lines()
    unsent: list[int] = []  # after Ctrl-C: how many lines were not sent, the first and the last

    def not_sent(number: int) -> None:
        unsent[:] = [unsent[0] + 1, unsent[1], number] if unsent else [1, number, number]

    def requests(advance: Callable[[], None]) -> Iterator[TaskRequest]:
        for number, text in lines:
            request = _checked_line(number, text, args, report)
            if request is None:
                advance()
            elif stop.is_set:
                not_sent(number)
                return
            else:
                report.sending(number)
                yield request

    # Ctrl-C stops taking lines; the calls in flight finish, so each line is either sent (with its result) or
    # not sent at all, and the summary can say which.
    previous = signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    try:
        with progress_bar(console, source.count, "creating tasks") as advance:

            def on_result(result: PublishResult) -> None:
                report.result(result)
                advance()

            publisher.publish_each(requests(advance), on_result=on_result, concurrency=args.concurrency)
    finally:
        signal.signal(signal.SIGINT, previous)
    elapsed = time.perf_counter() - started
    # After Ctrl-C the rest of the file is still read, not sent: its bad lines are reported as ever, and the
    # lines not sent are counted.
    for number, text in lines:
        if _checked_line(number, text, args, report) is not None:
            not_sent(number)

    for number, name in report.duplicates:
        console.print(
            f"line {number}: already exists: {name} (not sent again; the payload on this line was not enqueued)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if report.duplicate_count > _DUPLICATES_LISTED:
        console.print(f"... and {report.duplicate_count - _DUPLICATES_LISTED} more lines already there", markup=False)
    done = report.created + report.duplicate_count
    summary = (
        f"created {report.created}, duplicates {report.duplicate_count}"
        f"{' (already there, not sent again)' if report.duplicate_count else ''}, failed {report.failed}"
    )
    if stop.is_set:
        last = f"last line sent: {report.last_sent}" if report.last_sent is not None else "no line sent"
        rest = f"; not sent: lines {unsent[1]} to {unsent[2]}" if unsent else ""
        print(f"interrupted: {summary}, not sent {unsent[0] if unsent else 0} ({last}{rest})")
        resume = f"tail -n +{unsent[1]} {args.file} | ... bulk --file - ..." if unsent and args.file != "-" else ""
        console.print(
            "To resume without duplicates, run the same command again with --dedupe-field: what was sent is"
            " found there and not sent twice."
            + (f" Without it, send only the lines not sent: {resume}" if resume else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return INTERRUPTED
    print(f"{summary}, {done / elapsed if elapsed > 0 else 0.0:.0f} tasks/s")
    return 1 if report.failed else 0


def _checked_line(number: int, text: str, args: argparse.Namespace, report: BulkReport) -> TaskRequest | None:
    """The line's request, or None when it is not a task (reported as such, in its place)."""
    try:
        return _bulk_request(json.loads(text), args)
    except (ValueError, UsageError) as err:
        report.bad_line(number, f"not a task: {err}")
        return None


def _bulk_request(payload: Any, args: argparse.Namespace) -> TaskRequest:
    dedupe_key = None
    if args.dedupe_field is not None:
        if not isinstance(payload, dict) or args.dedupe_field not in payload:
            raise UsageError(f"no field {args.dedupe_field!r} to derive the task id from")
        dedupe_key = json.dumps(payload[args.dedupe_field], sort_keys=True)
    return TaskRequest(payload, queue=args.queue, dedupe_key=dedupe_key)
