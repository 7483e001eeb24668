"""The emulator's gRPC face: `google.cloud.tasks.v2.CloudTasks` on loopback, for the stock client.

Point the stock client at it::

    channel = grpc.insecure_channel(server.address)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))

A generic handler serves the 13 core RPCs; the rest (IAM, Batch*, CMEK) get gRPC's UNIMPLEMENTED. Requests
arrive as raw bytes and are decoded inside the handler, so an undecodable message is INVALID_ARGUMENT rather
than gRPC's UNKNOWN; a `CloudTasksError` becomes `context.abort(code, message)`, and any other exception (a bug
here) INTERNAL with its message, logged.

`server.faults` (a `FaultInjector`, see faults.py) fails chosen calls, adds latency and records requests, for
tests and benchmarks; left unset it costs one boolean check per call. Calls run on a pool of `workers` threads,
so with latency injected, `workers` bounds how many calls proceed at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from types import TracebackType
from typing import Any

import grpc
from google.cloud import tasks_v2

from localcloud.emulator.core import CloudTasksCore
from localcloud.emulator.errors import CloudTasksError
from localcloud.emulator.faults import FaultInjector

__all__ = ["SERVICE", "EmulatorServer"]

_LOG = logging.getLogger(__name__)

SERVICE = "google.cloud.tasks.v2.CloudTasks"

_Handler = Callable[[bytes, Any], bytes]


def _methods(core: CloudTasksCore) -> dict[str, tuple[Any, Callable[[Any], Any], Any]]:
    """RPC name -> (request type, core method, response type or None for google.protobuf.Empty)."""
    return {
        "CreateQueue": (tasks_v2.CreateQueueRequest, core.create_queue, tasks_v2.Queue),
        "GetQueue": (tasks_v2.GetQueueRequest, core.get_queue, tasks_v2.Queue),
        "ListQueues": (tasks_v2.ListQueuesRequest, core.list_queues, tasks_v2.ListQueuesResponse),
        "UpdateQueue": (tasks_v2.UpdateQueueRequest, core.update_queue, tasks_v2.Queue),
        "DeleteQueue": (tasks_v2.DeleteQueueRequest, core.delete_queue, None),
        "PauseQueue": (tasks_v2.PauseQueueRequest, core.pause_queue, tasks_v2.Queue),
        "ResumeQueue": (tasks_v2.ResumeQueueRequest, core.resume_queue, tasks_v2.Queue),
        "PurgeQueue": (tasks_v2.PurgeQueueRequest, core.purge_queue, tasks_v2.Queue),
        "CreateTask": (tasks_v2.CreateTaskRequest, core.create_task, tasks_v2.Task),
        "GetTask": (tasks_v2.GetTaskRequest, core.get_task, tasks_v2.Task),
        "ListTasks": (tasks_v2.ListTasksRequest, core.list_tasks, tasks_v2.ListTasksResponse),
        "DeleteTask": (tasks_v2.DeleteTaskRequest, core.delete_task, None),
        "RunTask": (tasks_v2.RunTaskRequest, core.run_task, tasks_v2.Task),
    }


def _decode(request_type: Any, raw: bytes) -> Any:
    try:
        return request_type.deserialize(raw)
    except Exception as error:  # protobuf's DecodeError and friends: the client sent something unreadable
        raise CloudTasksError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid request message: {error}") from None


def _rpc(
    name: str, request_type: Any, method: Callable[[Any], Any], response_type: Any, faults: FaultInjector
) -> _Handler:
    def answer(request: Any) -> bytes:
        response = method(request)
        return b"" if response_type is None else bytes(response_type.serialize(response))

    def handle(raw: bytes, context: Any) -> bytes:
        try:
            request = _decode(request_type, raw)
            if faults.active:
                return faults.intercept(name, request, context.invocation_metadata(), lambda: answer(request))
            return answer(request)
        except CloudTasksError as error:
            failure = error
        except Exception as error:  # a bug in the emulator must surface as INTERNAL, never UNKNOWN
            _LOG.exception("Cloud Tasks emulator: %s failed", name)
            failure = CloudTasksError(grpc.StatusCode.INTERNAL, f"emulator error in {name}: {error!r}")
        context.abort(failure.code, failure.message)
        raise AssertionError("unreachable: context.abort raises")

    return handle


class EmulatorServer:
    """Serves `core` over gRPC on host:port (port 0 = a free one, known after start()). Context manager.

    `workers` threads handle calls; `faults` injects failures and latency (see faults.py).
    """

    def __init__(self, core: CloudTasksCore, *, host: str = "127.0.0.1", port: int = 0, workers: int = 16) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.core = core
        self.faults = FaultInjector(_methods(core))
        self._host = host
        self._port = port
        self._workers = workers
        self._server: Any = None
        self.address = ""

    def start(self) -> EmulatorServer:
        if self._server is not None:
            raise RuntimeError("EmulatorServer already started")
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(_rpc(name, *spec, self.faults))
            for name, spec in _methods(self.core).items()
        }
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="cloud-tasks-grpc")
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port(f"{self._host}:{self._port}")
        if not port:
            raise RuntimeError(f"could not bind {self._host}:{self._port}")
        server.start()
        self._server = server
        self.address = f"{self._host}:{port}"
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
