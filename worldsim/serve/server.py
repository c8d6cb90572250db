"""``worldsim serve``: neural worlds over gRPC (API: ``proto/worldsim/v1/world.proto``).

    worldsim serve                          # every bundled world that has a checkpoint
    worldsim serve cartpole my.safetensors --port 50051 --token SECRET --tls-cert c.pem --tls-key k.pem

In Python (tests, notebooks, benchmarks)::

    with BackgroundServer({"tiny": world}, ServeConfig(port=0)) as srv:
        env = RemoteWorld(srv.address, "tiny")

The server runs on ``grpc.aio``. Sessions of a world share one engine and are stepped together in
micro-batches (``sessions.py`` explains how sessions map to engine rows). Standard health checking
(``grpc.health.v1``) and server reflection are on. Bad input gets its status code, with the
``worldsim-error-reason`` trailing metadata naming an ``ErrorReason``, and the server keeps
serving: INVALID_ARGUMENT (action shape/type/range/NaN, bad context), NOT_FOUND (unknown world or
session), RESOURCE_EXHAUSTED (session limit, oversize message), FAILED_PRECONDITION (step after
the episode ended), UNAUTHENTICATED (token), UNIMPLEMENTED (JPEG without Pillow). On SIGTERM or
SIGINT the health status turns NOT_SERVING, then the server stops with a grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from worldsim.engine.world import WorldModel
from worldsim.serve.auth import REASON_KEY, TokenAuthInterceptor
from worldsim.serve.sessions import (
    ClientSession,
    InvalidAction,
    InvalidArgument,
    Options,
    ServeError,
    SessionNotFound,
    StepOut,
    UnsupportedEncoding,
    WorldHost,
    WorldNotFound,
)
from worldsim.spaces import ActionError
from worldsim.wire import encoding as enc
from worldsim.wire._proto import world_pb2 as pb
from worldsim.wire._proto import world_pb2_grpc as pb_grpc
from worldsim.wire.convert import action_from_proto, action_space_to_proto, context_from_proto

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["WorldService"].full_name  # "worldsim.v1.WorldService"
T = TypeVar("T")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 or [::] to accept remote clients)."""
    port: int = 50051
    """Port; 0 picks a free one (``Server.port`` tells which)."""
    max_sessions: int = 64
    """Sessions per world: the rows of its engine (memory is allocated for all of them)."""
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
    """Larger requests are refused with RESOURCE_EXHAUSTED."""
    grace: float = 5.0
    """Seconds in-flight calls get to finish on shutdown."""


# ---------------------------------------------------------------------------- the service
def world_info(host: WorldHost) -> pb.WorldInfo:
    s = host.image_size
    return pb.WorldInfo(
        name=host.name,
        observation_shape=[s, s, 3],
        fps=int(host.world.config.fps),
        max_sessions=host.max_sessions,
        active_sessions=len(host.sessions),
        action_space=action_space_to_proto(host.world.action_spec),
        context_frames=host.context_frames,
    )


class WorldService(pb_grpc.WorldServiceServicer):
    def __init__(self, hosts: dict[str, WorldHost], cfg: ServeConfig) -> None:
        self.hosts, self.cfg = hosts, cfg
        self.index: dict[str, tuple[WorldHost, ClientSession]] = {}

    # ------------------------------------------------------------------ helpers
    async def _guard(self, context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
        """Await ``work``; turn a client's mistake into its status code, anything else into INTERNAL."""
        try:
            return await work
        except ServeError as e:
            await _abort(context, getattr(grpc.StatusCode, e.code), e.reason, str(e))
        except ActionError as e:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, pb.ERROR_REASON_INVALID_ACTION, str(e))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("internal error")
            await _abort(context, grpc.StatusCode.INTERNAL, pb.ERROR_REASON_UNSPECIFIED, f"{type(e).__name__}: {e}")
        raise AssertionError("unreachable")  # abort() raises

    def _lookup(self, sid: str) -> tuple[WorldHost, ClientSession]:
        found = self.index.get(sid)
        if found is None:
            raise SessionNotFound(f"unknown session {sid!r} (never opened, closed, or evicted after being idle)")
        return found

    def _frame(self, cs: ClientSession, frame: np.ndarray, out: StepOut | None = None) -> pb.Frame:
        opts = cs.options
        msg = pb.Frame(
            data=enc.encode(frame, opts.encoding, opts.jpeg_quality),
            shape=list(frame.shape),
            encoding=opts.encoding,  # type: ignore[arg-type]
            session_id=cs.sid,
            episode=cs.episode,
        )
        if out is not None:
            msg.reward, msg.terminated, msg.truncated = out.reward, out.terminated, out.truncated
            msg.frame_index, msg.episode, msg.batch_size = out.frame_index, out.episode, out.batch_size
            msg.latency_ms = (time.perf_counter() - out.t_in) * 1e3
        return msg

    def _context(self, host: WorldHost, msg: pb.Context) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not msg.shape and not msg.frames and not msg.actions:
            return None, None
        try:
            return context_from_proto(msg, host.world.action_spec, host.context_frames, host.image_size)
        except ActionError as e:
            raise InvalidAction(f"context actions: {e}") from e
        except ValueError as e:
            raise InvalidArgument(str(e)) from e

    async def _step(self, req: pb.StepRequest) -> pb.Frame:
        host, cs = self._lookup(req.session_id)
        try:
            action = action_from_proto(req.action, host.world.action_spec)
        except ActionError as e:
            raise InvalidAction(str(e)) from e
        out = await host.step(cs, action)
        return self._frame(cs, out.frame, out)

    # ------------------------------------------------------------------ RPCs
    async def ListWorlds(
        self, request: pb.ListWorldsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorldsResponse:
        return pb.ListWorldsResponse(worlds=[world_info(h) for h in self.hosts.values()])

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        return await self._guard(context, self._create(request))

    async def _create(self, request: pb.CreateSessionRequest) -> pb.CreateSessionResponse:
        host = self.hosts.get(request.world)
        if host is None:
            raise WorldNotFound(f"unknown world {request.world!r}; this server has {sorted(self.hosts)}")
        o = request.options
        if o.max_episode_steps < 0:
            raise InvalidArgument(f"max_episode_steps must be >= 0, got {o.max_episode_steps}")
        if not 0 <= o.jpeg_quality <= 95:
            raise InvalidArgument(f"jpeg_quality must be in 1..95 (0: default), got {o.jpeg_quality}")
        try:
            encoding = enc.canonical(o.encoding)
        except enc.UnsupportedEncoding as e:
            raise InvalidArgument(str(e)) from e
        if not enc.available(encoding):
            raise UnsupportedEncoding("this server cannot encode JPEG frames (it needs Pillow); use RAW or PNG")
        frames, actions = self._context(host, request.context)
        seed = request.seed if request.HasField("seed") else None
        cs, frame = await host.create(seed, Options(o.max_episode_steps, encoding, o.jpeg_quality), frames, actions)
        self.index[cs.sid] = (host, cs)
        log.info("session %s opened on %s (row %d, %d active)", cs.sid[:8], host.name, cs.row, len(host.sessions))
        return pb.CreateSessionResponse(session_id=cs.sid, world=world_info(host), frame=self._frame(cs, frame))

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        async def get() -> pb.SessionInfo:
            host, cs = self._lookup(request.session_id)
            o = cs.options
            return pb.SessionInfo(
                session_id=cs.sid,
                world=host.name,
                frame_index=cs.elapsed,
                episode=cs.episode,
                idle_seconds=time.monotonic() - cs.last_active,
                done=cs.done,
                options=pb.SessionOptions(
                    max_episode_steps=o.max_episode_steps,
                    encoding=o.encoding,  # type: ignore[arg-type]
                    jpeg_quality=o.jpeg_quality,
                ),
            )

        return await self._guard(context, get())

    async def Reset(self, request: pb.ResetRequest, context: grpc.aio.ServicerContext) -> pb.Frame:
        async def reset() -> pb.Frame:
            host, cs = self._lookup(request.session_id)
            frames, actions = self._context(host, request.context)
            seed = request.seed if request.HasField("seed") else None
            frame = await host.reset(cs, seed, frames, actions)
            return self._frame(cs, frame)

        return await self._guard(context, reset())

    async def Step(self, request: pb.StepRequest, context: grpc.aio.ServicerContext) -> pb.Frame:
        return await self._guard(context, self._step(request))

    async def Play(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Frame]:
        async for req in request_iterator:
            yield await self._guard(context, self._step(req))

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        async def close() -> pb.CloseSessionResponse:
            host, cs = self._lookup(request.session_id)
            await self.close(host, cs)
            return pb.CloseSessionResponse()

        return await self._guard(context, close())

    # ------------------------------------------------------------------ housekeeping
    async def close(self, host: WorldHost, cs: ClientSession, why: str = "the session was closed") -> None:
        self.index.pop(cs.sid, None)
        if await host.close(cs, why):
            log.info("session %s closed: %s (%d active on %s)", cs.sid[:8], why, len(host.sessions), host.name)

    async def evict_idle_forever(self) -> None:
        timeout = self.cfg.idle_timeout
        if timeout <= 0:
            return
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            for host in self.hosts.values():
                for cs in host.idle(timeout):
                    await self.close(host, cs, f"evicted after {timeout:g} s idle")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: int, message: str) -> None:
    await context.abort(code, message, trailing_metadata=((REASON_KEY, pb.ErrorReason.Name(reason)),))


# ---------------------------------------------------------------------------- the server
class Server:
    """A running gRPC server: ``server = await Server.start(worlds, cfg)``; ``server.port``."""

    def __init__(
        self,
        server: grpc.aio.Server,
        service: WorldService,
        health_servicer: health.aio.HealthServicer,
        port: int,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        self.server, self.service, self.health, self.port, self.tasks = server, service, health_servicer, port, tasks

    @property
    def hosts(self) -> dict[str, WorldHost]:
        return self.service.hosts

    @classmethod
    async def start(cls, worlds: dict[str, WorldModel], cfg: ServeConfig) -> Server:
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        hosts = {n: WorldHost(n, w, cfg.max_sessions, cfg.window_ms, cfg.rate_limit) for n, w in worlds.items()}
        server = grpc.aio.server(
            interceptors=[TokenAuthInterceptor(cfg.token)] if cfg.token else [],
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", 16 << 20),
                ("grpc.so_reuseport", 0),
            ],
        )
        service = WorldService(hosts, cfg)
        pb_grpc.add_WorldServiceServicer_to_server(service, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert and cfg.tls_key:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address}")
        for h in hosts.values():
            h.start()
        await server.start()
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        tasks = [asyncio.get_running_loop().create_task(service.evict_idle_forever())]
        log.info(
            "serving %s on %s:%d (%s%s)",
            ", ".join(hosts),
            cfg.host,
            port,
            "TLS" if cfg.tls_cert else "plaintext",
            ", token auth" if cfg.token else "",
        )
        return cls(server, service, health_servicer, port, tasks)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Health NOT_SERVING for every service, then stop; in-flight calls get ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for t in self.tasks:
            t.cancel()
        for h in self.hosts.values():
            await h.stop()


class BackgroundServer:
    """A :class:`Server` on its own event loop in a daemon thread (tests, benchmarks, notebooks)."""

    def __init__(self, worlds: dict[str, WorldModel], cfg: ServeConfig | None = None, timeout: float = 60.0) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: Server | None = None
        cfg = cfg or ServeConfig(port=0)
        self.host = cfg.host

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.server = self.loop.run_until_complete(Server.start(worlds, cfg))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e
                return
            finally:
                self._ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="worldsim-serve", daemon=True)
        self.thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise self._error

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float = 0.5) -> None:
        if self.server is None or not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(grace + 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- CLI
def load_worlds(names: list[str], device: Any = None) -> dict[str, WorldModel]:
    """Bundled world names or checkpoint paths -> {served name: world}; none: every trained bundled world."""
    from worldsim.worlds import get_world, list_worlds, world_path

    bundled = list_worlds()
    if not names:
        names = [n for n in bundled if get_world(n).checkpoint.exists()]
        if not names:
            raise SystemExit("worldsim serve: no bundled world has a checkpoint yet; name a checkpoint file")
    out: dict[str, WorldModel] = {}
    for n in names:
        try:
            path = world_path(n)
        except (KeyError, FileNotFoundError) as e:
            raise SystemExit(f"worldsim serve: {e.args[0] if e.args else e}") from None
        key = n if n in bundled else Path(n).stem
        if key in out:
            raise SystemExit(f"worldsim serve: two worlds would be served as {key!r}")
        out[key] = WorldModel.load(path, device=device)
        log.info("loaded %s from %s", key, path)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    parser.add_argument("worlds", nargs="*", help="bundled world names or checkpoint paths (default: all trained)")
    parser.add_argument("--host", default=d.host, help="address to bind (0.0.0.0 for remote clients)")
    parser.add_argument("--port", type=int, default=d.port, help="port (0: any free one; printed at start)")
    parser.add_argument("--max-sessions", type=int, default=d.max_sessions, help="sessions per world")
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout, help="close idle sessions (s, 0: never)")
    parser.add_argument("--rate-limit", type=float, default=d.rate_limit, help="max steps/s per session (0: none)")
    parser.add_argument("--window-ms", type=float, default=d.window_ms, help="micro-batching window (ms)")
    parser.add_argument("--token", default=None, help="require 'authorization: Bearer TOKEN' from clients")
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    parser.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, help="largest request")
    parser.add_argument("--grace", type=float, default=d.grace, help="shutdown grace period (s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")


def main(args: argparse.Namespace) -> int:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("worldsim serve: --tls-cert and --tls-key go together")
    cfg = ServeConfig(
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout,
        rate_limit=args.rate_limit,
        window_ms=args.window_ms,
        token=args.token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_bytes=args.max_message_bytes,
        grace=args.grace,
    )
    worlds = load_worlds(args.worlds, args.device)

    async def run() -> None:
        try:
            server = await Server.start(worlds, cfg)
        except (RuntimeError, OSError) as e:  # port taken, bad address, unreadable TLS files
            raise SystemExit(f"worldsim serve: {e}") from None
        # One machine-readable line, for scripts that start the server with --port 0.
        print(json.dumps({"port": server.port, "host": cfg.host, "worlds": sorted(worlds)}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: health NOT_SERVING, %g s grace for in-flight calls", cfg.grace)
        await server.stop(cfg.grace)
        log.info("stopped")

    asyncio.run(run())
    return 0
