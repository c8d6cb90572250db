"""Bearer-token authentication as a ``grpc.aio`` server interceptor.

Every call must carry the metadata ``authorization: Bearer <token>``, except health checks and
server reflection (load balancers and grpcurl probe those without credentials). A wrong or
missing token gets UNAUTHENTICATED before the servicer runs. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from worldsim.wire.errors import REASON_KEY

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES) or self._authorized(details):
            return handler
        return _deny(handler)


_METADATA = ((REASON_KEY, "ERROR_REASON_UNAUTHENTICATED"),)
_MESSAGE = "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind that fails with UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE, trailing_metadata=_METADATA)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _MESSAGE, trailing_metadata=_METADATA)
        yield  # pragma: no cover  (makes this an async generator)

    de, se = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, de, se)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, de, se)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, de, se)
    return grpc.unary_unary_rpc_method_handler(unary, de, se)
