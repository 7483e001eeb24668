"""`python -m taskclient dead-letters list|show|replay|discard`: the stack's dead letters from a shell or CI.

Exit status: 0 when everything asked for was done; 1 when any dead letter failed or Cloud Tasks refused a
call; 2 for a mistake in the arguments (nothing was sent).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any, Final, TextIO

from rich.console import Console
from rich.table import Table

from taskclient.dead_letters import DEFAULT_CONCURRENCY, DeadLetter, DeadLetters, LetterOutcome, LetterResult
from taskclient.errors import DeadLetterError, UsageError
from taskclient.progress import progress_bar

COMMAND: Final = "dead-letters"
# Piped into a file or a CI log, the table is as wide as its rows: a name folded mid-way cannot be copied.
_PIPED_WIDTH: Final = 1000


def add_parser(commands: Any, outputs_help: str) -> None:
    """The `dead-letters` command and its four actions, on the CLI's subparsers."""
    parser = commands.add_parser(COMMAND, help="list, show, replay or discard the stack's dead letters")
    actions = parser.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help)
        sub.add_argument("--outputs", metavar="FILE", help=outputs_help)
        sub.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        return sub

    listing = action("list", "a table of the dead letters (--json: every one in full, bodies in base64)")
    listing.add_argument("--queue", metavar="KEY", help="only those of this stack queue (its short key)")

    show = action("show", "one dead letter: metadata, headers and body")
    show.add_argument("name", metavar="NAME", help="the dead letter's task id, or its full task name")

    for name, verb in (("replay", "create the task again in its original queue, then delete"), ("discard", "delete")):
        bulk = action(name, f"{verb} dead letters, by name or --all")
        bulk.add_argument("names", nargs="*", metavar="NAME", help="task ids, or full task names")
        bulk.add_argument("--all", action="store_true", help="every dead letter (of --queue, when given)")
        bulk.add_argument("--queue", metavar="KEY", help="with --all: only those of this stack queue")
        bulk.add_argument(
            "--concurrency",
            type=int,
            default=DEFAULT_CONCURRENCY,
            help=f"dead letters handled at a time (default {DEFAULT_CONCURRENCY})",
        )
        if name == "discard":
            bulk.add_argument("--yes", action="store_true", help="confirm discard --all: it cannot be undone")


def check(args: argparse.Namespace) -> None:
    """Mistakes in the arguments, found before the outputs are read or any RPC is made."""
    if args.action not in ("replay", "discard"):
        return
    if args.all and args.names:
        raise UsageError(f"{args.action}: give dead-letter names or --all, not both")
    if not args.all and not args.names:
        raise UsageError(f"{args.action}: give the dead letters' names, or --all")
    if args.queue is not None and not args.all:
        raise UsageError(f"{args.action}: --queue selects the dead letters of --all; leave it out with names")
    if args.action == "discard" and args.all and not args.yes:
        which = f"of queue {args.queue!r}" if args.queue else "of every queue"
        raise UsageError(f"discard --all deletes every dead letter {which} for good: add --yes to confirm")


def run(args: argparse.Namespace, document: dict[str, Any]) -> int:
    with DeadLetters.from_mapping(document) as dead_letters:
        try:
            return _ACTIONS[args.action](dead_letters, args)
        except DeadLetterError as err:  # Cloud Tasks refused a list or a read
            print(f"error: {err}", file=sys.stderr)
            return 1


# --- list and show ------------------------------------------------------------------------------


def _list(dead_letters: DeadLetters, args: argparse.Namespace) -> int:
    letters = dead_letters.list(args.queue)
    if args.json:
        _print_json_array(letter.as_json() for letter in letters)
        return 0
    table, count = letters_table(letters)
    of = f" of queue {args.queue!r}" if args.queue else ""
    if not count:
        print(f"no dead letters{of}")
        return 0
    console = output_console()
    console.print(table)
    console.print(f"{count} dead letter{'s' if count != 1 else ''}{of}", markup=False, highlight=False)
    return 0


def letters_table(letters: Iterable[DeadLetter]) -> tuple[Table, int]:
    """The `list` table of `letters` (read as they come), and how many rows it has."""
    table = Table("name", "queue", "task", "attempt", "final", "recorded at", "size", "reason", highlight=False)
    for letter in letters:
        meta = letter.meta
        table.add_row(
            letter.id,
            letter.queue_key or (f"? ({meta.queue})" if meta else "?"),
            meta.task if meta else "?",
            str(meta.attempt) if meta else "?",
            ("yes" if meta.final else "provisional") if meta else "?",
            meta.recorded_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if meta else "?",
            f"{letter.size:,} B" if letter.size is not None else "unknown",
            letter.reason_line(),
        )
    return table, table.row_count


def _show(dead_letters: DeadLetters, args: argparse.Namespace) -> int:
    letter = dead_letters.show(args.name)
    if args.json:
        print(json.dumps(letter.as_json(), indent=2, ensure_ascii=False))
        return 0
    print("\n".join(describe(letter)))
    return 0


def describe(letter: DeadLetter) -> list[str]:
    """A dead letter for people: metadata, the original headers, then the body as text or base64."""
    meta = letter.meta
    lines = [f"name         {letter.name}"]
    if meta is None:
        lines.append(f"problem      {letter.problem}")
    else:
        queue = f"{letter.queue_key} ({meta.queue})" if letter.queue_key else f"{meta.queue} (not one of the stack's)"
        final = "final" if meta.final else "provisional: Cloud Tasks may have retried it since"
        lines += [
            f"queue        {queue}",
            f"task         {meta.task}",
            f"attempt      {meta.attempt} ({final})",
            f"recorded at  {meta.recorded_at.isoformat()}",
            f"reason       {_indented(meta.reason)}",
            f"replays as   {letter.replay_id}",
        ]
    lines += [f"url          {letter.url}", "headers"]
    lines += [f"  {name}: {value}" for name, value in sorted(letter.headers.items())] or ["  (none)"]
    kind, shown = letter.body_display()
    if kind == "omitted":
        lines.append(f"body         none: {shown} ({letter.body_summary()})")
    else:
        lines += [f"body         {letter.body_summary()}, as {kind}:", shown]
    return lines


def _indented(text: str) -> str:
    return text.replace("\n", "\n             ")


# --- replay and discard -------------------------------------------------------------------------


def _replay(dead_letters: DeadLetters, args: argparse.Namespace) -> int:
    return _bulk(dead_letters.replay, dead_letters, args, "replaying dead letters")


def _discard(dead_letters: DeadLetters, args: argparse.Namespace) -> int:
    return _bulk(dead_letters.discard, dead_letters, args, "discarding dead letters")


BulkAction = Callable[..., list[LetterResult]]


def _bulk(act: BulkAction, dead_letters: DeadLetters, args: argparse.Namespace, label: str) -> int:
    names: list[str] = args.names or dead_letters.names(args.queue)
    console = Console(stderr=True)
    with progress_bar(console, len(names), label) as advance:
        results = act(names, concurrency=args.concurrency, on_result=lambda _: advance())
    if args.json:
        print(json.dumps([result.as_json() for result in results], indent=2, ensure_ascii=False))
    else:
        for result in results:
            if result.ok:
                print(_done_line(result))
            else:
                letter = result.name.rsplit("/", 1)[-1]
                console.print(f"{letter}: {result.detail}", markup=False, highlight=False, soft_wrap=True)
    print(summary(results, args.action), file=sys.stderr if args.json else sys.stdout)
    return 0 if all(result.ok for result in results) else 1


def _done_line(result: LetterResult) -> str:
    letter = result.name.rsplit("/", 1)[-1]
    line = f"{result.outcome.value.replace('-', ' ')} {letter}"
    if result.task:
        line += f" as {result.task}"
    return f"{line} ({result.detail})" if result.detail else line


def summary(results: Iterable[LetterResult], action: str) -> str:
    """ "replayed 3, already replayed 1, failed 0" or "discarded 2, failed 1"."""
    counts = Counter(result.outcome for result in results)
    shown = (
        (LetterOutcome.REPLAYED, LetterOutcome.ALREADY_REPLAYED, LetterOutcome.FAILED)
        if action == "replay"
        else (LetterOutcome.DISCARDED, LetterOutcome.FAILED)
    )
    return ", ".join(f"{outcome.value.replace('-', ' ')} {counts[outcome]}" for outcome in shown)


# --- output -------------------------------------------------------------------------------------


def output_console(file: TextIO | None = None) -> Console:
    """A console on `file` (default stdout) that never wraps a table's rows when it is not a terminal."""
    console = Console(file=file, highlight=False)
    return console if console.is_terminal else Console(file=file, highlight=False, width=_PIPED_WIDTH)


def _print_json_array(items: Iterable[dict[str, Any]]) -> None:
    """A JSON array written as the items come, so a long listing is never held whole."""
    out = sys.stdout
    out.write("[")
    first = True
    for item in items:
        out.write(("\n  " if first else ",\n  ") + json.dumps(item, ensure_ascii=False))
        first = False
    out.write("]\n" if first else "\n]\n")


_ACTIONS: dict[str, Callable[[DeadLetters, argparse.Namespace], int]] = {
    "list": _list,
    "show": _show,
    "replay": _replay,
    "discard": _discard,
}
