"""The metrics interceptor: one concern, outermost, so it sees every call's final status."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from registry.runtime import metrics


def _code_name(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # grpc.aio stores the raw value after abort()
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        return "OK" if exc is None else "UNKNOWN"
    return "UNKNOWN"


class _Counted:
    """A request stream that counts what it yields (a plain iterator object, not an async
    generator, so an abandoned stream leaves nothing to finalise)."""

    __slots__ = ("_inner", "_labels")

    def __init__(self, inner: Any, labels: tuple[str, str, str]):
        self._inner = inner.__aiter__()
        self._labels = labels

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> Any:
        item = await self._inner.__anext__()
        metrics.RECEIVED.labels(*self._labels).inc()
        return item


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Count and time every RPC with the standard gRPC server metrics."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, name = method.lstrip("/").rpartition("/")
        kinds = {
            "unary_unary": grpc.unary_unary_rpc_method_handler,
            "stream_unary": grpc.stream_unary_rpc_method_handler,
            "unary_stream": grpc.unary_stream_rpc_method_handler,
            "stream_stream": grpc.stream_stream_rpc_method_handler,
        }
        for kind, make in kinds.items():
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            grpc_type = {
                "unary_unary": "unary",
                "stream_unary": "client_stream",
                "unary_stream": "server_stream",
                "stream_stream": "bidi_stream",
            }[kind]
            labels = (grpc_type, service, name)
            streams_out = kind.endswith("_stream")
            wrapper = _streaming if streams_out else _unary
            wrapped = make(
                wrapper(behavior, labels, kind.startswith("stream_")),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            self._wrapped[method] = wrapped
            return wrapped
        return handler


def _started(labels: tuple[str, str, str], streamed_in: bool, request: Any) -> Any:
    metrics.STARTED.labels(*labels).inc()
    if streamed_in:
        return _Counted(request, labels)
    metrics.RECEIVED.labels(*labels).inc()
    return request


def _finished(
    labels: tuple[str, str, str],
    context: grpc.aio.ServicerContext,
    exc: BaseException | None,
    started: float,
) -> None:
    metrics.HANDLED.labels(*labels, _code_name(context, exc)).inc()
    metrics.HANDLING.labels(*labels).observe(time.perf_counter() - started)


def _unary(
    behavior: Callable[..., Any], labels: tuple[str, str, str], streamed_in: bool
) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        request = _started(labels, streamed_in, request)
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            _finished(labels, context, exc, started)
            raise
        metrics.SENT.labels(*labels).inc()
        _finished(labels, context, None, started)
        return response

    return call


def _streaming(
    behavior: Callable[..., Any], labels: tuple[str, str, str], streamed_in: bool
) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        request = _started(labels, streamed_in, request)
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                await result
            else:
                async for response in result:
                    metrics.SENT.labels(*labels).inc()
                    yield response
        except BaseException as exc:
            _finished(labels, context, exc, started)
            raise
        _finished(labels, context, None, started)

    return call
