"""Errors a producer can act on: what went wrong, and what to change."""

from __future__ import annotations

from google.api_core import exceptions as gexc


class TaskClientError(Exception):
    """Base class: every error the task client raises on purpose."""


class TaskValidationError(TaskClientError, ValueError):
    """A task argument breaks a Cloud Tasks rule; found before any RPC, so nothing was sent."""


class PublishError(TaskClientError):
    """Cloud Tasks refused or failed a CreateTask call. `code` is the gRPC status name."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class DeadLetterError(TaskClientError):
    """A dead letter cannot be read, replayed or discarded: the message says why and what to change.
    `code` is the gRPC status name when Cloud Tasks refused the call, else "REFUSED"."""

    def __init__(self, message: str, code: str = "REFUSED") -> None:
        super().__init__(message)
        self.code = code


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


# Safe to retry only for named tasks: a retry of a name the server already stored gets ALREADY_EXISTS,
# which then means "created"; an unnamed task retried after a lost response would be created twice.
TRANSIENT = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)


def explain(
    error: gexc.GoogleAPICallError, *, queue_path: str, invoker_email: str, principal: str, location: str
) -> PublishError:
    """Turns a server error into a message that names the missing role, principal or resource."""
    code, detail = status(error)
    if isinstance(error, gexc.PermissionDenied):
        if "actAs" in detail or "serviceAccountUser" in detail:
            message = (
                f"{principal} may not act as the invoker {invoker_email}: grant it roles/iam.serviceAccountUser"
                " on that account (add it to the stack's enqueuers)"
            )
        else:
            message = (
                f"{principal} may not create tasks on {queue_path}: grant it roles/cloudtasks.enqueuer on the queue"
                " (add it to the stack's enqueuers)"
            )
    elif isinstance(error, gexc.NotFound):
        message = (
            f"queue {queue_path} not found: it is not deployed, or the outputs name the wrong project or location"
            f" (they say {location})"
        )
    elif isinstance(error, gexc.FailedPrecondition):
        message = (
            f"queue {queue_path} refused the task in its present state: `gcloud tasks queues describe` shows"
            " that state. A pause is not the cause: a paused queue accepts tasks (they wait until it is resumed)"
        )
    elif isinstance(error, gexc.Unauthenticated):
        message = NO_CREDENTIALS
    else:
        message = f"Cloud Tasks answered {code}"
    return PublishError(f"{message} [{code}: {detail}]", code)


NO_CREDENTIALS = "no valid credentials: run `gcloud auth application-default login`, or set up workload identity"
NO_CREDENTIALS_OR_EMULATOR = (
    "no Google credentials found, and {emulator_env} is not set: for Cloud Tasks, run `gcloud auth"
    " application-default login` (or use workload identity); for the local emulator, set"
    " {emulator_env}=127.0.0.1:8123"
)


NO_CREDENTIALS_OR_EMULATOR_HTTP = (
    "no Google credentials found, and {emulator_env} is not set: for Cloud Tasks, run `gcloud auth"
    " application-default login` (or use workload identity); for the local emulator's BufferTask, set"
    " {emulator_env}=http://127.0.0.1:8124 (its HTTP port)"
)


def status(error: gexc.GoogleAPICallError) -> tuple[str, str]:
    """The gRPC status name and the server's message."""
    code = error.grpc_status_code.name if error.grpc_status_code else type(error).__name__
    return code, error.message or str(error)


def explain_operator_call(
    error: gexc.GoogleAPICallError, *, principal: str, denied: str, not_found: str
) -> DeadLetterError:
    """A server error on a dead-letter operator's call (list, get, delete) as a message to act on.

    denied: what the principal may not do and the role that allows it; not_found: what NOT_FOUND means here.
    """
    code, detail = status(error)
    if isinstance(error, gexc.PermissionDenied):
        message = f"{principal} {denied} (add it to the stack's operators)"
    elif isinstance(error, gexc.NotFound):
        message = not_found
    elif isinstance(error, gexc.Unauthenticated):
        message = NO_CREDENTIALS
    else:
        message = f"Cloud Tasks answered {code}"
    return DeadLetterError(f"{message} [{code}: {detail}]", code)
