"""``worldsim serve``: neural worlds over gRPC (``proto/worldsim/v1/world.proto``).

    worldsim serve cartpole --port 50051 [--token SECRET] [--tls-cert c.pem --tls-key k.pem]

Sessions of a world share one engine and are stepped together (see ``sessions.py``). Standard
health checking and server reflection are on. Bad input gets a status code and the server keeps
serving: INVALID_ARGUMENT (action shape/type/NaN), NOT_FOUND (unknown world or session),
RESOURCE_EXHAUSTED (session limit, oversize message), FAILED_PRECONDITION (step after the
episode ended), UNAUTHENTICATED (token). SIGTERM: health goes NOT_SERVING, then the server
stops with a grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from worldsim.engine.world import WorldModel
from worldsim.serve._proto import world_pb2 as pb
from worldsim.serve._proto import world_pb2_grpc as pb_grpc
from worldsim.serve.auth import TokenAuthInterceptor
from worldsim.serve.encoding import encode
from worldsim.serve.sessions import ClientSession, EpisodeOver, SessionLimit, StepOut, WorldHost
from worldsim.spaces import ActionError, ActionSpec

log = logging.getLogger(__name__)
SERVICE = "worldsim.v1.WorldService"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind (use 0.0.0.0 to accept remote clients)."""
    port: int = 50051
    """Port; 0 picks a free one."""
    max_sessions: int = 64
    """Sessions per world (rows of its engine)."""
    idle_timeout: float = 300.0
    """Seconds without a request before a session is closed."""
    rate_limit: float = 0.0
    """Max steps per second per session (0 = unlimited); faster requests are paced."""
    window_ms: float = 3.0
    """Micro-batching window: how long a tick waits for other sessions' actions."""
    token: str | None = None
    """Bearer token required from clients (None: no auth)."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_message_bytes: int = 1 << 20
    """Larger requests are refused (RESOURCE_EXHAUSTED)."""
    grace: float = 5.0
    """Seconds in-flight calls get on shutdown."""


def action_from_proto(msg: pb.Action, spec: ActionSpec) -> np.ndarray:
    kind = msg.WhichOneof("value")
    if kind is None:
        raise ActionError("the action is empty")
    if kind == "discrete":
        raw: Any = [msg.discrete]
    elif kind == "multi":
        raw = [list(msg.multi.values)]
    else:
        raw = [list(msg.continuous.values)]
    if (spec.kind == "discrete") != (kind == "discrete") or (spec.kind == "box") != (kind == "continuous"):
        raise ActionError(f"a {kind} action does not fit the world's {spec.kind} action space")
    return spec.validate(raw, batch=1)[0]


def world_info(host: WorldHost) -> pb.WorldInfo:
    s = host.world.config.codec.image_size
    return pb.WorldInfo(
        name=host.name,
        action_space_json=host.world.action_spec.to_json(),
        observation_shape=[s, s, 3],
        fps=int(host.world.config.fps),
        max_sessions=host.max_sessions,
        active_sessions=len(host.sessions),
    )


class WorldService(pb_grpc.WorldServiceServicer):
    def __init__(self, hosts: dict[str, WorldHost], cfg: ServeConfig) -> None:
        self.hosts, self.cfg = hosts, cfg
        self.index: dict[str, tuple[WorldHost, ClientSession]] = {}

    # ------------------------------------------------------------------ helpers
    async def _lookup(self, sid: str, context: grpc.aio.ServicerContext) -> tuple[WorldHost, ClientSession]:
        found = self.index.get(sid)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown session {sid!r} (closed or evicted?)")
        return found  # type: ignore[return-value]

    def _frame(self, cs: ClientSession, frame: np.ndarray, out: StepOut | None = None) -> pb.Frame:
        msg = pb.Frame(
            data=encode(frame, cs.encoding),
            shape=list(frame.shape),
            encoding=cs.encoding,  # type: ignore[arg-type]
            session_id=cs.sid,
        )
        if out is not None:
            msg.reward, msg.terminated, msg.truncated = out.reward, out.terminated, out.truncated
            msg.frame_index, msg.latency_ms = out.frame_index, out.latency_ms
        return msg

    async def _step(self, req: pb.StepRequest, context: grpc.aio.ServicerContext) -> pb.Frame:
        host, cs = await self._lookup(req.session_id, context)
        try:
            action = action_from_proto(req.action, host.world.action_spec)
        except ActionError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            out = await host.step(cs, action)
        except EpisodeOver as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return self._frame(cs, out.frame, out)

    # ------------------------------------------------------------------ RPCs
    async def ListWorlds(
        self, request: pb.ListWorldsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorldsResponse:
        return pb.ListWorldsResponse(worlds=[world_info(h) for h in self.hosts.values()])

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        host = self.hosts.get(request.world)
        if host is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown world {request.world!r}; served: {sorted(self.hosts)}"
            )
        assert host is not None  # abort() raised otherwise
        if request.max_episode_steps < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_episode_steps must be >= 0")
        if request.encoding == pb.FRAME_ENCODING_JPEG:
            try:
                import PIL  # noqa: F401
            except ImportError:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "JPEG frames need Pillow on the server")
        try:
            cs, frame = await host.create(
                request.seed if request.HasField("seed") else None,
                int(request.encoding),
                int(request.max_episode_steps),
            )
        except SessionLimit as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        self.index[cs.sid] = (host, cs)
        log.info("session %s opened on %s (row %d, %d active)", cs.sid[:8], host.name, cs.row, len(host.sessions))
        return pb.CreateSessionResponse(session_id=cs.sid, world=world_info(host), frame=self._frame(cs, frame))

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.SessionInfo:
        import time

        host, cs = await self._lookup(request.session_id, context)
        return pb.SessionInfo(
            session_id=cs.sid,
            world=host.name,
            frame_index=cs.elapsed,
            episodes=cs.episodes,
            idle_seconds=time.monotonic() - cs.last_active,
            done=cs.done,
        )

    async def Reset(self, request: pb.ResetRequest, context: grpc.aio.ServicerContext) -> pb.Frame:
        host, cs = await self._lookup(request.session_id, context)
        frame = await host.reset(cs, request.seed if request.HasField("seed") else None)
        return self._frame(cs, frame)

    async def Step(self, request: pb.StepRequest, context: grpc.aio.ServicerContext) -> pb.Frame:
        return await self._step(request, context)

    async def Play(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Frame]:
        async for req in request_iterator:
            yield await self._step(req, context)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        host, cs = await self._lookup(request.session_id, context)
        await self._close(host, cs)
        return pb.CloseSessionResponse()

    async def _close(self, host: WorldHost, cs: ClientSession) -> None:
        self.index.pop(cs.sid, None)
        await host.close(cs)
        log.info("session %s closed (%d active on %s)", cs.sid[:8], len(host.sessions), host.name)

    async def evict_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.idle_timeout / 4))
            for host in self.hosts.values():
                for sid in host.evict_idle(self.cfg.idle_timeout):
                    found = self.index.get(sid)
                    if found is not None:
                        log.info("evicting idle session %s", sid[:8])
                        await self._close(*found)


class Server:
    """A running gRPC server (``await Server.start(...)``); ``port`` is the bound port."""

    def __init__(
        self,
        server: grpc.aio.Server,
        service: WorldService,
        health: health.aio.HealthServicer,
        port: int,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        self.server, self.service, self.health, self.port, self.tasks = server, service, health, port, tasks

    @classmethod
    async def start(cls, worlds: dict[str, WorldModel], cfg: ServeConfig) -> Server:
        hosts = {
            name: WorldHost(name, w, cfg.max_sessions, cfg.window_ms, cfg.rate_limit) for name, w in worlds.items()
        }
        for h in hosts.values():
            h.start()
        interceptors = [TokenAuthInterceptor(cfg.token)] if cfg.token else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", 16 << 20),
            ],
        )
        service = WorldService(hosts, cfg)
        pb_grpc.add_WorldServiceServicer_to_server(service, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert and cfg.tls_key:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        await server.start()
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        tasks = [asyncio.get_running_loop().create_task(service.evict_loop())]
        log.info("serving %s on %s:%d%s", ", ".join(hosts), cfg.host, port, " (TLS)" if cfg.tls_cert else "")
        return cls(server, service, health_servicer, port, tasks)

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.health.enter_graceful_shutdown()  # every service NOT_SERVING
        await self.server.stop(grace)
        for t in self.tasks:
            t.cancel()
        for h in self.service.hosts.values():
            await h.stop()


def load_worlds(names: list[str], device: Any = None) -> dict[str, WorldModel]:
    from worldsim.worlds import get_world, list_worlds, world_path

    if not names:
        names = [n for n in list_worlds() if get_world(n).checkpoint.exists()]
        if not names:
            raise SystemExit("no bundled world has a checkpoint; name a checkpoint file")
    out = {}
    for n in names:
        path = world_path(n)
        key = n if n in list_worlds() else Path(n).stem
        out[key] = WorldModel.load(path, device=device)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("worlds", nargs="*", help="bundled world names or checkpoint paths (default: all bundled)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--max-sessions", type=int, default=64)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--rate-limit", type=float, default=0.0, help="max steps/s per session (0: none)")
    parser.add_argument("--window-ms", type=float, default=3.0, help="micro-batching window")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--tls-cert", type=Path, default=None)
    parser.add_argument("--tls-key", type=Path, default=None)
    parser.add_argument("--device", default=None)


def main(args: argparse.Namespace) -> int:
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
    )
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    worlds = load_worlds(args.worlds, args.device)

    async def run() -> None:
        server = await Server.start(worlds, cfg)
        print(json.dumps({"port": server.port, "worlds": sorted(worlds)}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down (grace %.0f s)", cfg.grace)
        await server.stop(cfg.grace)

    asyncio.run(run())
    return 0
