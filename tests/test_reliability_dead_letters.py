"""Dead letters at scale: 10,000 tasks, a share of which the handler refuses for good, every one of those kept whole
on the dead-letter queue and replayed to done once the handler is fixed.

The tasks carry binary bodies (/tasks/ledger takes bytes), so "byte for byte" is tested on what JSON or text
handling would damage. The probe's first generation refuses bodies whose first byte is 0 (the bug); generation 2
is the fix deployed. Between them, the dead letters wait on the paused dead-letter queue.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from reliability_probe import BROKEN
from reliability_support import PROBE_COMMAND, LocalStack, key_of, local_stack, start_probe_generation, stock_client

from contract.dead_letters import dead_letter_task_id
from contract.outcomes import TaskOutcome
from taskclient.connection import connect
from taskclient.dead_letters import DeadLetters, LetterOutcome
from taskclient.publisher import Outcome, TaskPublisher, TaskRequest

TOTAL = 10_000
BROKEN_EVERY = 20  # 500 of the 10,000 are refused by the first generation
LEDGER_PATH = "/tasks/ledger"
SETTLE_S = 120  # bounds a failure; the run itself settles in ~30 s


def body(n: int) -> bytes:
    """Task n's body: 64 to 2,111 pseudo-random bytes (mostly not UTF-8), the first byte saying its kind."""
    kind = BROKEN if n % BROKEN_EVERY == 3 else b"\x01"
    return kind + hashlib.shake_256(f"ledger {n}".encode()).digest(63 + n % 2048)


@pytest.fixture(scope="module")
def dev() -> Iterator[LocalStack]:
    with local_stack("dev", handler_command=PROBE_COMMAND) as stack:
        yield stack


def test_every_permanent_failure_of_ten_thousand_is_a_dead_letter_byte_for_byte_and_replays_to_done(
    dev: LocalStack,
) -> None:
    watch = dev.watch
    bodies = [body(n) for n in range(TOTAL)]
    started = time.monotonic()
    with TaskPublisher(dev.outputs, connection=connect(dev.local.emulator_host)) as publisher:
        results = publisher.publish_many([TaskRequest(b, path=LEDGER_PATH) for b in bodies], concurrency=32)
    assert Counter(r.outcome for r in results) == {Outcome.CREATED: TOTAL}, [r.error for r in results if r.error][:5]
    keys = [key_of(r.name) for r in results if r.name]
    sent = dict(zip(keys, bodies, strict=True))
    broken = {key for key, b in sent.items() if b[:1] == BROKEN}
    assert len(broken) == TOTAL // BROKEN_EVERY

    # Generation 1: every task reaches its outcome, and the emulator has the acknowledgement of each.
    watch.wait(lambda: len(watch.terminal) >= TOTAL, f"{TOTAL} tasks to reach an outcome", timeout=SETTLE_S)
    watch.wait(lambda: len(watch.acknowledged) >= TOTAL, f"{TOTAL} acknowledgements", timeout=SETTLE_S)
    settled_s = time.monotonic() - started
    with watch.changed:
        outcomes = {key: [e["outcome"] for e in watch.entries[key]] for key in keys}
        done_bodies = {key[1]: list(watch.ledger[key[1]]) for key in keys}
    assert {k for k in keys if outcomes[k] != [TaskOutcome.DEAD_LETTERED]} == set(keys) - broken
    assert {k for k in keys if outcomes[k] != [TaskOutcome.DONE]} == broken
    assert {k[1]: [hashlib.sha256(sent[k]).hexdigest()] for k in set(keys) - broken} == {
        t: s for t, s in done_bodies.items() if s
    }

    # On the dead-letter queue: one letter for each refused task, named after it, holding its body byte for byte,
    # its path and its metadata; nothing for the others.
    with DeadLetters(dev.outputs, connection=connect(dev.local.emulator_host)) as letters:
        listed = list(letters.list())
        assert len(listed) == len(broken)
        by_task = {(letter.meta.queue, letter.meta.task): letter for letter in listed if letter.meta}
        assert set(by_task) == broken
        wrong = [
            letter.id
            for key, letter in by_task.items()
            if letter.body != sent[key]
            or letter.id != dead_letter_task_id(*key)
            or not letter.url.endswith(LEDGER_PATH)
            or letter.meta is None
            or (letter.meta.attempt, letter.meta.final, letter.meta.body_omitted) != (1, True, "")
            or letter.meta.sha256 != hashlib.sha256(sent[key]).hexdigest()
            or "not handled yet" not in letter.meta.reason
        ]
        assert wrong == [], f"{len(wrong)} dead letters differ from their task, e.g. {wrong[:5]}"

        # The fix deployed: a new generation of the handler, then every dead letter replayed.
        first = dev.local.processes[1]
        first.terminate()
        first.wait(timeout=30)
        start_probe_generation(dev, 2)
        replay_started = time.monotonic()
        replayed = letters.replay_all(concurrency=16)
        replay_s = time.monotonic() - replay_started
        assert Counter(r.outcome for r in replayed) == {LetterOutcome.REPLAYED: len(broken)}, [
            r.detail for r in replayed if not r.ok
        ][:5]
        assert letters.names() == []

    # Each replay is done, with the original body, once; the original queue ends empty.
    original_of_letter = {letter.name: key for key, letter in by_task.items()}
    replay_of = {key_of(r.task): original_of_letter[r.name] for r in replayed if r.task}
    assert len(replay_of) == len(broken)
    watch.wait(lambda: set(replay_of) <= watch.terminal, f"{len(broken)} replays to reach an outcome", timeout=SETTLE_S)
    watch.wait(lambda: set(replay_of) <= watch.acknowledged, f"{len(broken)} replay acknowledgements")
    with watch.changed:
        replay_outcomes = Counter(o for key in replay_of for o in (e["outcome"] for e in watch.entries[key]))
        replay_bodies = {key: list(watch.ledger[key[1]]) for key in replay_of}
    assert replay_outcomes == {TaskOutcome.DONE: len(broken)}
    assert replay_bodies == {new: [hashlib.sha256(sent[old]).hexdigest()] for new, old in replay_of.items()}
    with stock_client(dev.local.emulator_host) as client:
        assert list(client.list_tasks(parent=dev.outputs.queues["default"].path)) == []
    print(
        f"\ndead letters: {TOTAL} tasks settled after {settled_s:.1f}s, {len(broken)} dead-lettered byte for byte;"
        f" replayed in {replay_s:.1f}s, all done"
    )
