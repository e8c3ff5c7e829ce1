"""Cross-cutting concerns of every call: turning errors into statuses, and caller identity."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc

from blindlink.server.status import ServiceError

log = logging.getLogger("blindlink.server")

# The method being handled, e.g. "GetRelease", for audit entries of refused requests.
current_method: ContextVar[str] = ContextVar("current_method", default="")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Answer a ServiceError with its status; any other exception with INTERNAL and a request
    ID, logging the exception type only (handlers may hold identity-free but private data)."""

    def intercept_service(
        self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _guard(handler.unary_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _guard(handler.stream_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _guard_stream(handler.unary_stream, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, ServiceError):
        log.info("%s refused: %s", method, exc.code.name)
        context.abort(exc.code, exc.message)
    request_id = uuid.uuid4().hex[:12]
    log.error("%s failed (request %s): %s", method, request_id, type(exc).__name__, exc_info=True)
    context.abort(grpc.StatusCode.INTERNAL, f"internal server error (request {request_id})")


def _guard(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        current_method.set(method.rsplit("/", 1)[-1])
        try:
            return behaviour(request, context)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            if context.code() is not None:  # the handler aborted already
                raise
            _abort(context, method, exc)

    return guarded


def _guard_stream(
    behaviour: Callable[..., Iterator[Any]], method: str
) -> Callable[..., Iterator[Any]]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        current_method.set(method.rsplit("/", 1)[-1])
        try:
            yield from behaviour(request, context)
        except Exception as exc:  # noqa: BLE001
            if context.code() is not None:
                raise
            _abort(context, method, exc)

    return guarded
