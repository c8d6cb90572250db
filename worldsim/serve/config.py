"""``ServeConfig``: every option of ``worldsim serve``, checked when built; where the server listens."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 or [::] to accept remote clients)."""
    port: int = 50051
    """Port; 0 picks a free one (``Server.port`` tells which)."""
    max_sessions: int = 64
    """Sessions per world: the rows of its engine (memory is allocated for all of them)."""
    max_sessions_per_client: int = 0
    """Sessions one client may hold open at once, over all worlds (0: no cap besides
    ``max_sessions``). Clients are told apart by their address (IP, without the port), so one
    client cannot take every slot for the whole idle timeout; clients behind one NAT or proxy
    share a cap."""
    idle_timeout: float = 300.0
    """Seconds without a request after which a session is closed (0: never)."""
    rate_limit: float = 0.0
    """Max steps per second per session (0: unlimited); faster clients are paced, not refused."""
    window_ms: float = 3.0
    """Micro-batching window: how long a tick waits for the other sessions' actions."""
    token: str | None = None
    """Bearer token clients must send (None: no auth)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key``, the port serves TLS only."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    max_message_bytes: int = 1 << 20
    """Larger requests are refused with RESOURCE_EXHAUSTED (``ERROR_REASON_MESSAGE_TOO_LARGE``)."""
    grace: float = 5.0
    """Seconds in-flight calls get to finish on shutdown."""

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field and its ``worldsim serve`` flag."""
        checks = [
            ("max_sessions", self.max_sessions >= 1, ">= 1"),
            ("max_sessions_per_client", self.max_sessions_per_client >= 0, ">= 0 (0: no cap)"),
            ("port", 0 <= self.port <= 65535, "in 0..65535 (0: any free port)"),
            ("idle_timeout", self.idle_timeout >= 0, ">= 0 (0: never)"),
            ("rate_limit", self.rate_limit >= 0, ">= 0 (0: unlimited)"),
            ("window_ms", self.window_ms >= 0, ">= 0"),
            ("max_message_bytes", self.max_message_bytes >= 1024, ">= 1024"),
            ("grace", self.grace >= 0, ">= 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} ({flag}) must be {want}, got {getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(
                "--tls-cert and --tls-key go together: give both (PEM chain and its private key) or neither"
            )


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, found with a plain socket first (gRPC's own failure logs C++ lines)."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
    except OSError as e:
        return e.strerror or str(e)
    return None


def bind(server: grpc.aio.Server, cfg: ServeConfig) -> int:
    """Add the listening port (TLS when configured) to ``server``; a port in use is a one-line OSError."""
    address = f"{cfg.host}:{cfg.port}"
    why = _port_taken(cfg.host, cfg.port) if cfg.port else None
    if why:
        raise OSError(f"could not listen on {address} ({why}): pick another --port (0: any free one) or --host")
    try:
        if cfg.tls_cert and cfg.tls_key:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc raises RuntimeError("Failed to bind ...") for a port in use
        port = 0
    if port == 0:
        raise OSError(
            f"could not listen on {address}: the port is in use or the address is not on this machine; "
            "pick another --port (0: any free one) or --host"
        )
    return port
