"""Errors that handlers raise to answer a call with a specific gRPC status and message."""

from __future__ import annotations

import grpc

# Trailing metadata of a call refused because the server is busy: the same call may succeed
# in a moment (the blindlink client retries it).
RETRY_METADATA_KEY = "blindlink-retry"


class ServiceError(Exception):
    """Abort the current call with `code` and a message the caller can act on; `retry`: the
    same call may succeed in a moment."""

    def __init__(self, code: grpc.StatusCode, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry = retry


def busy(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry=True)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def denied(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, message)


def already_exists(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, message)
