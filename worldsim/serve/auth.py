"""Bearer-token authentication as a ``grpc.aio`` server interceptor.

Every call must carry the metadata ``authorization: Bearer <token>`` (the scheme in any case, as
HTTP auth schemes are case-insensitive), except health checks and server reflection (load
balancers and grpcurl probe those without credentials). The check runs first, on the call's
metadata alone: a call without the right token gets UNAUTHENTICATED (reason
``ERROR_REASON_UNAUTHENTICATED``) before its method is looked up or its body is read, whatever the
body holds and whether or not the method exists.

Tokens are compared in constant time: both sides are hashed with SHA-256 first, so that
``hmac.compare_digest`` compares two 32-byte digests and not even the token's length leaks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from worldsim.serve.interceptors import refusing_handler

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_DENIED = refusing_handler(
    "UNAUTHENTICATED",
    "ERROR_REASON_UNAUTHENTICATED",
    "missing or wrong bearer token: send the metadata 'authorization: Bearer <token>' with the server's --token",
)


def _digest(token: str | bytes) -> bytes:
    raw = token if isinstance(token, bytes) else token.encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).digest()


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self._expected = _digest(token)

    def authorized(self, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        """Whether the call's metadata carries ``authorization: Bearer <the token>``."""
        for key, value in metadata or ():
            if key.lower() != "authorization":
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, credentials = text.strip().partition(" ")
            same = hmac.compare_digest(_digest(credentials.strip()), self._expected)
            return same and scheme.lower() == "bearer"
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if str(details.method).startswith(OPEN_PREFIXES) or self.authorized(details.invocation_metadata):
            return await continuation(details)
        return _DENIED
