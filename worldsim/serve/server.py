"""The gRPC server of ``worldsim serve`` (API: ``proto/worldsim/v1/world.proto``; CLI: ``serve/cli.py``).

In Python: ``with BackgroundServer({"tiny": world}, ServeConfig(port=0)) as srv: RemoteWorld(srv.address, "tiny")``.

The server runs on ``grpc.aio``. Sessions of a world share one engine and are stepped together in
micro-batches (``sessions.py``). Every call first passes the interceptors (``auth.py``: the token,
before anything else; ``interceptors.py``: unknown methods, oversize and undecodable bodies);
health (per world too) and reflection v1 + v1alpha are in ``probes.py``, the options in
``config.py``. Every error has its status code, the ``worldsim-error-reason`` trailer and a
bounded message (``worldsim.wire.errors.abort``; the codes are listed in the .proto), and the
server keeps serving. On SIGTERM or SIGINT the health status turns NOT_SERVING, then the server
stops with a grace period.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health

from worldsim.engine.world import WorldModel
from worldsim.serve.auth import TokenAuthInterceptor
from worldsim.serve.config import ServeConfig, bind
from worldsim.serve.interceptors import RequestGuard, client_of, grpc_ceiling
from worldsim.serve.probes import Health, add_reflection, probe_world
from worldsim.serve.sessions import (
    ClientSession,
    InvalidAction,
    InvalidArgument,
    Options,
    ServeError,
    SessionLimit,
    SessionNotFound,
    StepOut,
    UnsupportedEncoding,
    WorldHost,
    WorldNotFound,
)
from worldsim.spaces import ActionError
from worldsim.threads import torch_thread
from worldsim.wire import encoding as enc
from worldsim.wire._proto import world_pb2 as pb
from worldsim.wire._proto import world_pb2_grpc as pb_grpc
from worldsim.wire.convert import action_from_proto, action_space_to_proto, context_from_proto
from worldsim.wire.errors import abort, clip

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["WorldService"].full_name  # "worldsim.v1.WorldService"
T = TypeVar("T")


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


class WorldUnhealthy(ServeError):
    code, reason = "FAILED_PRECONDITION", pb.ERROR_REASON_WORLD_UNHEALTHY


class WorldService(pb_grpc.WorldServiceServicer):
    def __init__(self, hosts: dict[str, WorldHost], cfg: ServeConfig) -> None:
        self.hosts, self.cfg = hosts, cfg
        self.index: dict[str, tuple[WorldHost, ClientSession]] = {}
        self.unhealthy: dict[str, str] = {}  # world -> why it failed its probe
        self.owner: dict[str, str] = {}  # session id -> client (for max_sessions_per_client)
        self.held: Counter[str] = Counter()  # client -> sessions open (or being opened)

    # ------------------------------------------------------------------ helpers
    async def _guard(self, context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
        """Await ``work``; turn a client's mistake into its status code, anything else into INTERNAL."""
        try:
            return await work
        except ServeError as e:
            await abort(context, e.code, pb.ErrorReason.Name(e.reason), str(e))
        except ActionError as e:
            await abort(context, "INVALID_ARGUMENT", "ERROR_REASON_INVALID_ACTION", str(e))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("internal error")
            await abort(context, "INTERNAL", "ERROR_REASON_UNSPECIFIED", f"{type(e).__name__}: {e}")

    def _lookup(self, sid: str) -> tuple[WorldHost, ClientSession]:
        found = self.index.get(sid)
        if found is None:
            raise SessionNotFound(f"unknown session {clip(sid)} (never opened, closed, or evicted after being idle)")
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
        return await self._guard(context, self._create(request, client_of(context)))

    async def _create(self, request: pb.CreateSessionRequest, client: str) -> pb.CreateSessionResponse:
        host = self.hosts.get(request.world)
        if host is None:
            raise WorldNotFound(f"unknown world {clip(request.world)}; this server has {sorted(self.hosts)}")
        if host.name in self.unhealthy:
            raise WorldUnhealthy(f"world {host.name!r} failed its health check ({self.unhealthy[host.name]})")
        cap = self.cfg.max_sessions_per_client
        if cap and self.held[client] >= cap:
            raise SessionLimit(
                f"this client ({client}) already holds {self.held[client]} sessions, the server's limit per client "
                "(--max-sessions-per-client): close one first"
            )
        self.held[client] += 1  # reserved now: concurrent creates of one client cannot pass the cap together
        try:
            response = await self._open(host, request)
        except BaseException:
            self._release(client)
            raise
        self.owner[response.session_id] = client
        return response

    def _release(self, client: str) -> None:
        self.held[client] -= 1
        if self.held[client] <= 0:
            del self.held[client]

    async def _open(self, host: WorldHost, request: pb.CreateSessionRequest) -> pb.CreateSessionResponse:
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
        client = self.owner.pop(cs.sid, None)
        if client is not None:
            self._release(client)
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


# ---------------------------------------------------------------------------- the server
class Server:
    """A running gRPC server: ``server = await Server.start(worlds, cfg)``; ``server.port``."""

    def __init__(
        self, server: grpc.aio.Server, service: WorldService, health: Health, port: int, tasks: list[asyncio.Task[None]]
    ) -> None:
        self.server, self.service, self.health, self.port, self.tasks = server, service, health, port, tasks

    @property
    def hosts(self) -> dict[str, WorldHost]:
        return self.service.hosts

    @classmethod
    async def start(cls, worlds: dict[str, WorldModel], cfg: ServeConfig) -> Server:
        # Each world's first step, before any client: a world with non-finite output is NOT_SERVING.
        unhealthy = {
            n: why
            for n, w in worlds.items()
            if (why := await asyncio.get_running_loop().run_in_executor(torch_thread(), probe_world, w))
        }
        hosts = {n: WorldHost(n, w, cfg.max_sessions, cfg.window_ms, cfg.rate_limit) for n, w in worlds.items()}
        guard = RequestGuard(cfg.max_message_bytes)
        server = grpc.aio.server(
            interceptors=[TokenAuthInterceptor(cfg.token), guard] if cfg.token else [guard],
            options=[
                # The guard refuses bodies over max_message_bytes with a labelled status; gRPC's own
                # limit (no trailer) only stops what is far beyond it.
                ("grpc.max_receive_message_length", grpc_ceiling(cfg.max_message_bytes)),
                ("grpc.max_send_message_length", 16 << 20),
                ("grpc.so_reuseport", 0),
            ],
        )
        service = WorldService(hosts, cfg)
        service.unhealthy = unhealthy
        pb_grpc.add_WorldServiceServicer_to_server(service, server)
        health_ = Health(server, SERVICE)
        add_reflection(server, [SERVICE, health.SERVICE_NAME])
        port = bind(server, cfg)
        for h in hosts.values():
            h.start()
        await server.start()
        await health_.publish(unhealthy, hosts)
        tasks = [asyncio.get_running_loop().create_task(service.evict_idle_forever())]
        log.info(
            "serving %s on %s:%d (%s%s)",
            ", ".join(hosts),
            cfg.host,
            port,
            "TLS" if cfg.tls_cert else "plaintext",
            ", token auth" if cfg.token else "",
        )
        return cls(server, service, health_, port, tasks)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Health NOT_SERVING for every service, then stop; in-flight calls get ``grace`` seconds."""
        await self.health.shutdown()
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
