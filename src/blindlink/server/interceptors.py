"""Cross-cutting concerns of every call, one interceptor each.

The server installs them outermost first: `RequestLogInterceptor` (request ID, access log),
`MetricsInterceptor`, `ErrorInterceptor` (exceptions to statuses), `AdmissionInterceptor` (calls
beyond the server's shares, stalled, idle and slow requests) and `DecodingInterceptor` (request
bytes to messages, inside the call, so that garbage is answered INVALID_ARGUMENT like any other
bad request). Because the decoding
happens innermost, the interceptors outside it see request messages as the bytes received.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from blindlink.security.tls import peer_fingerprint
from blindlink.server.admission import MIB, Admission, BufferBudget, call_kind
from blindlink.server.logs import CallContext, current_call, exception_summary
from blindlink.server.metrics import ServerMetrics
from blindlink.server.refusals import RefusalLimiter
from blindlink.server.status import RETRY_METADATA_KEY, ServiceError, busy, invalid

log = logging.getLogger("blindlink.server")
access_log = logging.getLogger("blindlink.server.access")

REQUEST_ID_METADATA_KEY = "blindlink-request-id"
MAX_DETAILS_CHARS = 1000
LINKAGE_SERVICE = "blindlink.v1.Linkage"

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def split_method(full_method: str) -> tuple[str, str]:
    """("blindlink.v1.Linkage", "Upload") from "/blindlink.v1.Linkage/Upload"."""
    service, _, name = full_method.lstrip("/").rpartition("/")
    return service, name


def status_code(context: grpc.ServicerContext, failure: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with: the one it set, else OK, CANCELLED or UNKNOWN."""
    code = context.code()  # type: ignore[attr-defined]  # grpc-stubs lack it (grpc >= 1.38)
    if isinstance(code, grpc.StatusCode):
        return code
    if failure is None:
        return grpc.StatusCode.OK
    return grpc.StatusCode.CANCELLED if not context.is_active() else grpc.StatusCode.UNKNOWN


class _WrappingInterceptor(grpc.ServerInterceptor):
    """Replaces each method handler with `wrap(handler, method)`."""

    def intercept_service(
        self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self.wrap(handler, handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


def _behaviour(handler: grpc.RpcMethodHandler) -> Behaviour:
    """The handler's one behaviour, of the four kinds."""
    kinds = (handler.unary_unary, handler.unary_stream, handler.stream_unary, handler.stream_stream)
    return next(behaviour for behaviour in kinds if behaviour is not None)


def _handler(
    handler: grpc.RpcMethodHandler,
    behaviour: Behaviour,
    decode: bool = True,
    streaming_requests: bool = False,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` running `behaviour`; `decode=False` hands the
    behaviour the request bytes undecoded, `streaming_requests` a request stream."""
    factory = _FACTORIES[
        (handler.request_streaming or streaming_requests, handler.response_streaming)
    ]
    deserializer = handler.request_deserializer if decode else None
    return factory(behaviour, deserializer, handler.response_serializer)


def _around(
    handler: grpc.RpcMethodHandler,
    observe: Callable[[Any, grpc.ServicerContext], AbstractContextManager[Any]],
    streaming_requests: bool = False,
) -> grpc.RpcMethodHandler:
    """The handler with its whole call, streamed responses included, inside
    `observe(request, context)`; the context manager yields the request to pass on.
    `streaming_requests`: the new handler takes a request stream whatever the old one took."""
    behaviour = _behaviour(handler)
    if handler.response_streaming:

        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with observe(request, context) as passed:
                yield from behaviour(passed, context)

        return _handler(handler, streaming, streaming_requests=streaming_requests)

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        with observe(request, context) as passed:
            return behaviour(passed, context)

    return _handler(handler, unary, streaming_requests=streaming_requests)


class RequestLogInterceptor(_WrappingInterceptor):
    """Gives every call a request ID (in its log records and in the `blindlink-request-id`
    trailing metadata) and logs its outcome: one access-log record per call."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service, name = split_method(method)
        level = logging.INFO if service == LINKAGE_SERVICE else logging.DEBUG

        @contextmanager
        def logged(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            request_id = uuid.uuid4().hex[:16]
            current_call.set(CallContext(request_id, name))
            context.set_trailing_metadata(((REQUEST_ID_METADATA_KEY, request_id),))
            started = time.monotonic()
            failure = None
            try:
                yield request
            except BaseException as exc:
                failure = exc
                raise
            finally:
                code = status_code(context, failure)
                fields = {
                    "code": code.name,
                    "duration_ms": round(1000 * (time.monotonic() - started), 1),
                    "peer": context.peer(),
                }
                access_log.log(level, "call finished", extra={"fields": fields})
                current_call.set(None)

        return _around(handler, logged)


class MetricsInterceptor(_WrappingInterceptor):
    """Counts calls by method and status code, their duration, the calls in flight and the
    request bytes received."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        labels = split_method(method)
        received = self._metrics.request_bytes.labels(*labels)
        in_flight = self._metrics.in_flight.labels(*labels)
        latency = self._metrics.latency.labels(*labels)

        def counted(requests: Iterator[Any]) -> Iterator[Any]:
            for message in requests:
                received.inc(_size(message))
                yield message

        @contextmanager
        def measured(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            in_flight.inc()
            started = time.monotonic()
            failure = None
            try:
                if handler.request_streaming:
                    yield counted(request)
                else:
                    received.inc(_size(request))
                    yield request
            except BaseException as exc:
                failure = exc
                raise
            finally:
                in_flight.dec()
                latency.observe(time.monotonic() - started)
                code = status_code(context, failure).name
                self._metrics.requests.labels(*labels, code).inc()

        return _around(handler, measured)


def _size(message: Any) -> int:
    return len(message) if isinstance(message, bytes) else int(message.ByteSize())


@dataclass(frozen=True)
class StreamLimits:
    """How long a call may wait for its first request message; how long an upload may go
    without sending `progress_bytes` (counted in bytes, not messages: a flood of empty or
    one-byte messages is idle), and how long it may last."""

    idle_timeout: float = 30.0
    max_duration: float = 3600.0
    progress_bytes: int = 64 * 1024
    first_message_timeout: float = 10.0


class AdmissionInterceptor(_WrappingInterceptor):
    """Admits a call before it waits for anything from its client (see `admission`), then
    reads its request messages on a thread of their own, so that the call thread stops waiting
    in time: the first message must arrive within the first-message timeout, and an upload must
    keep sending and end within the stream limits (else DEADLINE_EXCEEDED), so that abandoned
    and crawling calls do not hold a thread and a partial file for long. A call that has sent
    nothing yet may be evicted to make room for another caller's, and a message that would
    take the request bytes held across calls past the budget is refused (both
    RESOURCE_EXHAUSTED, marked for retry).

    Every handler becomes request-streaming: for a unary one, gRPC would wait for the request
    on the call thread, with no time limit, before any of blindlink's code ran."""

    def __init__(self, admission: Admission, budget: BufferBudget, limits: StreamLimits) -> None:
        self._admission = admission
        self._budget = budget
        self._limits = limits
        self._refusals = RefusalLimiter()  # for the log: a refused caller may retry at once

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kind = call_kind(method, handler.request_streaming, handler.response_streaming)
        upload = handler.request_streaming and not handler.response_streaming

        @contextmanager
        def admitted(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            caller = peer_fingerprint(context) or context.peer()
            timed = _TimedRequests(self._limits, self._budget, upload)
            ticket = self._admission.enter(kind, caller, timed.evict)
            if isinstance(ticket, str):
                self._log_refusal(caller, ticket)
                raise busy(ticket)
            timed.start(requests)
            try:
                yield timed if handler.request_streaming else timed.first()
            finally:
                timed.close()
                self._admission.leave(ticket)

        return _around(handler, admitted, streaming_requests=True)

    def _log_refusal(self, caller: str, reason: str) -> None:
        left_out = self._refusals.admit(caller)
        if left_out is not None:
            fields = {"caller": caller, "reason": reason, "refusals_left_out": left_out}
            log.warning("call refused: busy", extra={"fields": fields})


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()
_QUEUED = 2  # messages read ahead of the handler


class _TimedRequests:
    """The request messages of a call, read on a thread of their own so that waiting for one
    can time out. A message counts against the server's buffer budget from when it is read
    until the handler asks for the next one, or the call ends."""

    def __init__(self, limits: StreamLimits, budget: BufferBudget, upload: bool) -> None:
        self._limits = limits
        self._budget = budget
        self._upload = upload
        self._started = time.monotonic()
        self._first = True
        # Until when the upload may take to send its next `progress_bytes`, and how many of
        # them it has sent since it last made that much progress.
        self._idle_deadline = self._started + limits.idle_timeout
        self._since_progress = 0
        self._items: deque[tuple[Any, int]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._ended = False
        self._evicted = False
        self._held = 0  # bytes of the message the handler has now

    def start(self, requests: Iterator[Any]) -> None:
        threading.Thread(
            target=self._read, args=(requests,), name="blindlink-request-reader", daemon=True
        ).start()

    def evict(self) -> bool:
        """End the call if nothing of it has arrived yet (True): the server needs its thread
        for another caller."""
        with self._ready:
            self._evicted = self._first and not self._items and not self._closed
            self._ready.notify_all()
            return self._evicted

    def close(self) -> None:
        """Stop handing over messages (the call is over; the reader ends with it)."""
        with self._ready:
            self._closed = True
            for _, size in self._items:
                self._budget.give(size)
            self._items.clear()
            self._ready.notify_all()
        self._release()

    def first(self) -> Any:
        """The one request message of a unary call."""
        for message in self:
            return message
        raise invalid("the call ended before its request message arrived")

    def __iter__(self) -> _TimedRequests:
        return self

    def __next__(self) -> Any:
        self._release()
        if self._ended:
            raise StopIteration
        deadline, why = self._limit()
        with self._ready:
            while not self._items or self._evicted:
                if self._evicted:
                    raise busy(
                        "the call had sent nothing yet, and the server needed its place for "
                        "another caller; retry"
                    )
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ServiceError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{why}; the call was aborted, nothing was kept",
                    )
                self._ready.wait(remaining)
            item, self._held = self._items.popleft()
            self._first = False
            self._ready.notify_all()
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        self._since_progress += self._held
        if self._since_progress >= self._limits.progress_bytes:
            self._since_progress = 0
            self._idle_deadline = time.monotonic() + self._limits.idle_timeout
        return item

    def _limit(self) -> tuple[float | None, str]:
        """When waiting for the next message times out (None: never), and why."""
        limits = self._limits
        limits_now: list[tuple[float, str]] = []
        if self._first:
            limits_now.append(
                (
                    self._started + limits.first_message_timeout,
                    f"no request message arrived within {limits.first_message_timeout:g} s "
                    "(the server's first_message_timeout)",
                )
            )
        if self._upload:
            limits_now.append(
                (
                    self._idle_deadline,
                    f"the request stream sent less than {limits.progress_bytes:,} bytes in "
                    f"{limits.idle_timeout:g} s (the server's stream_idle_timeout)",
                )
            )
            limits_now.append(
                (
                    self._started + limits.max_duration,
                    f"the request stream lasted longer than {limits.max_duration:g} s "
                    "(the server's stream_max_duration)",
                )
            )
        return min(limits_now) if limits_now else (None, "")

    def _release(self) -> None:
        self._budget.give(self._held)
        self._held = 0

    def _read(self, requests: Iterator[Any]) -> None:
        try:
            for message in requests:
                size = _size(message)
                if not self._budget.take(size):
                    self._hand_over(_Failed(self._over_budget()), 0)
                    return
                if not self._hand_over(message, size):
                    return
            self._hand_over(_END, 0)
        except Exception as exc:  # noqa: BLE001 - re-raised in the handler's thread
            self._hand_over(_Failed(exc), 0)

    def _over_budget(self) -> ServiceError:
        return busy(
            f"the server holds {self._budget.held / MIB:,.0f} MiB of request data in memory "
            f"already, the most it allows (max_buffered_mib {self._budget.limit / MIB:g}); "
            "retry in a moment"
        )

    def _hand_over(self, item: Any, size: int) -> bool:
        with self._ready:
            while len(self._items) >= _QUEUED and not self._closed:
                self._ready.wait()
            if self._closed:
                self._budget.give(size)
                return False
            self._items.append((item, size))
            self._ready.notify_all()
            return True


class ErrorInterceptor(_WrappingInterceptor):
    """Answers a ServiceError with its status; any other exception with INTERNAL and the
    request ID, logging the exception's type and stack only (its message may quote data)."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        @contextmanager
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield request
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status
                # grpc-stubs lack ServicerContext.code (grpc >= 1.38)
                if context.code() is not None or not context.is_active():  # type: ignore[attr-defined]
                    raise  # aborted already, or the client has gone
                _abort(context, exc)

        return _around(handler, guarded)


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, ServiceError):
        message = exc.message
        if len(message) > MAX_DETAILS_CHARS:  # it may quote the request; keep the status small
            message = message[: MAX_DETAILS_CHARS - 1] + "…"
        if exc.retry:
            trailing = tuple(context.trailing_metadata() or ())
            context.set_trailing_metadata((*trailing, (RETRY_METADATA_KEY, "1")))
        context.abort(exc.code, message)
    call = current_call.get()
    request_id = call.request_id if call else "-"
    error, stack = exception_summary((type(exc), exc, exc.__traceback__))
    log.error("internal error", extra={"fields": {"error": error, "stack": stack}})
    context.abort(grpc.StatusCode.INTERNAL, f"internal server error (request {request_id})")


class DecodingInterceptor(_WrappingInterceptor):
    """Decodes request messages inside the call, so that bytes that are not a valid message
    are answered INVALID_ARGUMENT, logged and counted like any other bad request (gRPC itself
    would answer INTERNAL before any interceptor saw the call)."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer
        if parse is None:
            return handler
        behaviour = _behaviour(handler)

        def decoded_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            return behaviour((_decode(parse, m) for m in requests), context)

        def decoded(request: bytes, context: grpc.ServicerContext) -> Any:
            return behaviour(_decode(parse, request), context)

        return _handler(
            handler, decoded_stream if handler.request_streaming else decoded, decode=False
        )


def _decode(parse: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return parse(data)
    except DecodeError:
        raise invalid("the request is not a valid protobuf message of this method's type") from None
