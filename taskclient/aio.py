"""AsyncTaskPublisher: many CreateTask calls at the server's pace, over grpc.aio.

The same tasks, checks, retries and error messages as TaskPublisher (it shares their code), without the costs
that made publish_many slow: a thread per call in flight, proto-plus marshalling and api-core's wrapper per call.
Here one event loop keeps `concurrency` calls in flight on one grpc.aio channel; each request is a raw protobuf
message copied from a template built once per batch shape (queue, URL, deadline, OIDC token), with only what
differs per task set on the copy (name, body, headers, schedule time).

    async with AsyncTaskPublisher.from_env() as publisher:
        results = await publisher.publish_many(payloads, concurrency=64)

TaskPublisher.publish_many runs this engine for synchronous callers (see taskclient.calls.run_sync).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack

import grpc
from google.api_core import exceptions as gexc
from google.api_core.gapic_v1 import routing_header
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports.base import DEFAULT_CLIENT_INFO

from contract.outputs import StackOutputs
from taskclient.calls import Backoff, GaveUp, check_concurrency
from taskclient.connection import Connection, connect
from taskclient.errors import TaskClientError
from taskclient.publisher import (
    CheckedTask,
    Outcome,
    PublishResult,
    TaskBuilder,
    TaskRequest,
    create_failure,
    read_outputs_document,
    read_outputs_env,
)

__all__ = ["AsyncTaskPublisher", "RequestTemplates"]

CREATE_TASK = "/google.cloud.tasks.v2.CloudTasks/CreateTask"
CreateTaskRequestPb: Any = tasks_v2.CreateTaskRequest.pb()  # the generated (_pb2) message classes
TaskPb: Any = tasks_v2.Task.pb()
# What the client library sends with every call: its x-goog-api-client header.
_CLIENT_INFO: tuple[str, str] = DEFAULT_CLIENT_INFO.to_grpc_metadata()  # type: ignore[no-untyped-call]
_MAX_TEMPLATES = 256  # batch shapes kept; a path per task would otherwise grow the cache without end


class AsyncPublisherOptions(TypedDict, total=False):
    """The keyword arguments of `AsyncTaskPublisher`, which its from_* constructors pass on."""

    connection: Connection | None
    retries: int
    backoff: float
    timeout: float
    now: Callable[[], datetime]
    sleep: Callable[[float], Awaitable[None]]


class RequestTemplates:
    """CreateTask requests as raw protobuf: the constant part built once per batch shape, through the same
    proto-plus conversion as TaskPublisher's Task, then copied and completed per task."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str, float, bool], Any] = {}

    def request(self, checked: CheckedTask) -> Any:
        """The CreateTaskRequest (the _pb2 message) for `checked`."""
        shape = (checked.queue.path, checked.url, checked.deadline.total_seconds(), checked.oidc_token is not None)
        template = self._templates.get(shape)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            template = self._templates[shape] = self._template(checked)
        request = CreateTaskRequestPb()
        request.CopyFrom(template)
        task = request.task
        if checked.name:
            task.name = checked.name
        http_request = task.http_request
        http_request.body = checked.body
        http_request.headers.update(checked.headers)
        if checked.schedule is not None:
            task.schedule_time.FromDatetime(checked.schedule)
        return request

    @staticmethod
    def _template(checked: CheckedTask) -> Any:
        constant = dataclasses.replace(checked, body=b"", headers={}, name="", schedule=None)
        return tasks_v2.CreateTaskRequest.pb(
            tasks_v2.CreateTaskRequest(parent=checked.queue.path, task=constant.task())
        )


class AsyncTaskPublisher:
    """Creates HTTP tasks on the stack's queues from a coroutine, as TaskPublisher does (same checks, retries and
    messages), many at a time on one grpc.aio channel.

    Options as TaskPublisher's, except `sleep`: a coroutine function (asyncio.sleep), so a retry's backoff never
    blocks the event loop. The channel is made on first use, in the running loop, and belongs to that loop: use
    a publisher in one loop, and `await close()` (or `async with`) when done.
    """

    def __init__(
        self,
        outputs: StackOutputs,
        *,
        connection: Connection | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 20.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.outputs = outputs
        self._connection = connection or connect()
        self._builder = TaskBuilder(outputs, now)
        self._calls = Backoff(retries, backoff)
        self._sleep = sleep
        self._timeout = timeout
        self._templates = RequestTemplates()
        self._metadata: dict[str, Any] = {}  # queue path -> its grpc.aio.Metadata, made once
        self._channel: Any = None
        self._create_task: Any = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **options: Unpack[AsyncPublisherOptions]) -> AsyncTaskPublisher:
        """From a dict: `pulumi stack output --json`, parsed, or what a StackReference gives."""
        return cls(StackOutputs.from_mapping(values), **options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Unpack[AsyncPublisherOptions]) -> AsyncTaskPublisher:
        """From a `pulumi stack output --json` document; "-" reads standard input."""
        return cls.from_mapping(read_outputs_document(path), **options)

    @classmethod
    def from_env(cls, **options: Unpack[AsyncPublisherOptions]) -> AsyncTaskPublisher:
        """From the JSON document in CLOUDRUN_TASKS_OUTPUTS (how a deployed producer receives it)."""
        return cls.from_mapping(read_outputs_env(), **options)

    async def __aenter__(self) -> AsyncTaskPublisher:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel and the connection."""
        await self.close_channel()
        self._connection.close()

    async def close_channel(self) -> None:
        """Closes this loop's channel only (the connection stays open for a next loop)."""
        channel, self._channel, self._create_task = self._channel, None, None
        if channel is not None:
            await channel.close()

    # --- publishing -----------------------------------------------------------------------------

    async def create(self, request: TaskRequest) -> tuple[Outcome, str]:
        """As TaskPublisher.create: CREATED or DUPLICATE with the task's full name, or PublishError."""
        return await self._create(self._builder.check(request))

    async def publish_many(
        self,
        items: Iterable[TaskRequest | Any],
        *,
        concurrency: int = 32,
        on_result: Callable[[PublishResult], None] | None = None,
    ) -> list[PublishResult]:
        """As TaskPublisher.publish_many: one result per item, in input order; `on_result` is called (in the
        loop) as each finishes."""
        results: list[PublishResult | None] = []

        def keep(result: PublishResult) -> None:
            if result.index >= len(results):
                results.extend([None] * (result.index + 1 - len(results)))
            results[result.index] = result
            if on_result is not None:
                on_result(result)

        await self.publish_each(items, on_result=keep, concurrency=concurrency)
        return [result for result in results if result is not None]

    async def publish_each(
        self,
        items: Iterable[TaskRequest | Any],
        *,
        on_result: Callable[[PublishResult], None],
        concurrency: int = 32,
    ) -> None:
        """Creates a task per item, at most `concurrency` calls in flight, and hands each result (with its index)
        to `on_result` as it finishes, keeping none: for a stream of any length.

        `items` is read lazily, one item as a call slot frees: at most `concurrency` items are taken ahead of their
        results. If reading `items` or `on_result` raises, no further item is taken, the calls in flight finish,
        and the exception is raised then.
        """
        check_concurrency(concurrency)
        source = enumerate(items)
        failed: list[BaseException] = []

        async def worker() -> None:
            while not failed:
                try:
                    index, item = next(source)
                except StopIteration:
                    return
                except Exception as err:
                    failed.append(err)
                    return
                result = await self._publish_one(index, item)
                try:
                    on_result(result)
                except Exception as err:
                    failed.append(err)
                    return

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if failed:
            raise failed[0]

    async def _publish_one(self, index: int, item: TaskRequest | Any) -> PublishResult:
        request = item if isinstance(item, TaskRequest) else TaskRequest(item)
        try:
            outcome, name = await self._create(self._builder.check(request))
            return PublishResult(index, outcome, name=name)
        except TaskClientError as err:
            return PublishResult(index, Outcome.FAILED, error=str(err))
        except Exception as err:
            return PublishResult(index, Outcome.FAILED, error=f"unexpected {type(err).__name__}: {err}")

    async def _create(self, checked: CheckedTask) -> tuple[Outcome, str]:
        request = self._templates.request(checked)
        parent = checked.queue.path
        metadata = self._metadata.get(parent)
        if metadata is None:
            routing: tuple[str, str] = routing_header.to_grpc_metadata((("parent", parent),))  # type: ignore[no-untyped-call]
            # A Metadata object, not a tuple: grpc.aio would convert the tuple on every call.
            metadata = self._metadata[parent] = grpc.aio.Metadata(routing, _CLIENT_INFO)
        create_task = self._stub()

        async def create(attempt: int) -> tuple[Outcome, str]:
            try:
                created = await create_task(request, timeout=self._timeout, metadata=metadata)
                return Outcome.CREATED, created.name
            except grpc.aio.AioRpcError as rpc_error:
                # As api-core's wrapper does: the exception class of the status, with the server's details.
                error = gexc.from_grpc_error(rpc_error)  # type: ignore[no-untyped-call]
                if isinstance(error, gexc.AlreadyExists):
                    # After a retry, the name is there because our own earlier attempt stored it.
                    return (Outcome.CREATED if attempt else Outcome.DUPLICATE), checked.name
                raise error from None

        try:
            # A task without a name is not retried: after a lost response, a retry would create it twice.
            return await self._calls.run_async(create, sleep=self._sleep, retries=None if checked.name else 0)
        except (GaveUp, gexc.GoogleAPICallError) as err:
            raise create_failure(
                err, named=bool(checked.name), parent=parent, outputs=self.outputs, principal=self._connection.principal
            ) from None

    def _stub(self) -> Any:
        if self._create_task is None:
            self._channel = self._connection.aio_channel()
            self._create_task = self._channel.unary_unary(
                CREATE_TASK,
                request_serializer=CreateTaskRequestPb.SerializeToString,
                response_deserializer=TaskPb.FromString,
            )
        return self._create_task
