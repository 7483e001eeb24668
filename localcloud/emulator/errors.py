"""The one error type of the emulator core: a gRPC status code and a message, as Cloud Tasks answers.

The gRPC server turns it into `context.abort(code, message)`, so the stock client raises the same
`google.api_core.exceptions` class it would raise against Cloud Tasks.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ALREADY_EXISTS_MESSAGE",
    "NOT_FOUND_MESSAGE",
    "QUEUE_MISSING_MESSAGE",
    "QUEUE_TOMBSTONE_MESSAGE",
    "TASK_TOMBSTONE_MESSAGE",
    "CloudTasksError",
    "invalid_argument",
]

# Messages as Cloud Tasks words them (aertje's conformance goldens recorded against the real service).
NOT_FOUND_MESSAGE = "Requested entity was not found."
ALREADY_EXISTS_MESSAGE = "Requested entity already exists"
TASK_TOMBSTONE_MESSAGE = (
    "The task no longer exists, though a task with this name existed recently. "
    "The task either successfully completed or was deleted."
)
QUEUE_TOMBSTONE_MESSAGE = (
    "The queue cannot be created because a queue with this name existed too recently "
    "(a deleted queue's name is reserved for a while)."
)
QUEUE_MISSING_MESSAGE = (
    "Queue does not exist. If you just created the queue, wait at least a minute for the queue to initialize."
)


class CloudTasksError(Exception):
    """An RPC failure: `code` is a `grpc.StatusCode`, `message` the text the client sees."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def invalid_argument(message: str) -> CloudTasksError:
    return CloudTasksError(grpc.StatusCode.INVALID_ARGUMENT, message)
