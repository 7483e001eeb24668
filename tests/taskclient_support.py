"""The stack's outputs, and an emulator with its queues and its paused dead-letter queue, for the taskclient
tests. Until the stack exports `dead_letter_queue`, the outputs name one in the stack's location."""

from __future__ import annotations

from typing import Any

from emulator_support import LoopbackEmulator, stack_queues

from contract.outputs import OutputName, StackOutputs
from harness import dev_outputs, dev_run

STAND_IN_DEAD_LETTER_QUEUE_ID = "tasks-dev-dead-letters-000000"


def outputs_document() -> dict[str, Any]:
    """The dev stack's outputs document, a fresh copy each call."""
    document = dev_outputs()
    if OutputName.DEAD_LETTER_QUEUE not in document:
        location = document[OutputName.DEFAULT_QUEUE_PATH].rsplit("/queues/", 1)[0]
        document[OutputName.DEAD_LETTER_QUEUE] = f"{location}/queues/{STAND_IN_DEAD_LETTER_QUEUE_ID}"
    return document


def stack() -> StackOutputs:
    return StackOutputs.from_mapping(outputs_document())


def stack_emulator(**options: Any) -> LoopbackEmulator:
    """A LoopbackEmulator (not yet started) with the dev stack's queues and its dead-letter queue, paused."""
    server = LoopbackEmulator(stack_queues(dev_run()), **options)
    dead_letters = stack().dead_letter_queue
    if dead_letters not in server.queues:
        server.queues.append(server.add_queue(dead_letters))
    server.pause(dead_letters)
    return server
