"""Client sessions of one world, stepped together in micro-batches.

How client sessions map to the engine
-------------------------------------
The engine steps a :class:`~worldsim.engine.Session` of B rows with one batched model call, and
``Session.step(actions, rows=...)`` advances *only* the rows it is given (the others keep their KV
cache, RNG and frame untouched). So:

- Each world has ONE engine Session with ``max_sessions`` rows; each client session owns one row
  for its whole life. Every row has its own RNG and history, so sessions never see each other.
- Active sessions are kept *compact* in rows ``0..n-1``: closing a session moves the last
  session's row into the hole (``Session.move_row`` copies history, RNG and frame). When every
  client asked, a tick steps the prefix ``0..n-1``, a view of the cache with no copy; a subset
  costs one gather/scatter of those rows.
- A tick runs ``step(actions, rows)`` for exactly the rows whose clients sent an action. **A row
  never advances without its client's action**: there are no filler actions and no replays.
- Worlds sampled with classifier-free guidance are served the same way: the engine keeps their
  doubled guidance rows to itself.
- Episodes follow :mod:`worldsim.episodes` (``truncated`` is Gymnasium's time-limit rule), as on
  every other surface.

Micro-batching
--------------
Step requests go into ``pending`` (at most one per session; a second one while the first waits is
FAILED_PRECONDITION). The batcher task wakes on the first request, then waits until every active
session has asked or the window passed, whichever is first, and runs one batched step. While a
batch runs, new requests queue up for the next tick, so throughput grows with the number of
clients while a lone client waits for nobody (all active sessions = itself). The window is
``window_ms``, or a tenth of the recent batched-step time when that is longer (at most 50 ms):
with a slow model, waiting a little for stragglers costs little and fills the batches.

Threads
-------
All model work (reset, step, move_row) runs on one worker thread per world, off the event loop.
Row bookkeeping happens on the event loop under ``lock``, which a tick holds while its batch runs,
so creating, resetting or closing a session never interleaves with a step.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from worldsim.engine.world import WorldModel
from worldsim.episodes import truncated as time_limit_reached
from worldsim.threads import on_torch_thread, torch_thread
from worldsim.wire._proto import world_pb2 as pb

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------------- errors
class ServeError(Exception):
    """An error a client caused; ``code`` is the grpc.StatusCode name, ``reason`` an ErrorReason."""

    code = "INTERNAL"
    reason = pb.ERROR_REASON_UNSPECIFIED


class WorldNotFound(ServeError):
    code, reason = "NOT_FOUND", pb.ERROR_REASON_WORLD_NOT_FOUND


class SessionNotFound(ServeError):
    code, reason = "NOT_FOUND", pb.ERROR_REASON_SESSION_NOT_FOUND


class InvalidArgument(ServeError):
    code, reason = "INVALID_ARGUMENT", pb.ERROR_REASON_INVALID_ARGUMENT


class InvalidAction(ServeError):
    code, reason = "INVALID_ARGUMENT", pb.ERROR_REASON_INVALID_ACTION


class SessionLimit(ServeError):
    code, reason = "RESOURCE_EXHAUSTED", pb.ERROR_REASON_SESSION_LIMIT


class EpisodeEnded(ServeError):
    code, reason = "FAILED_PRECONDITION", pb.ERROR_REASON_EPISODE_ENDED


class StepInFlight(ServeError):
    code, reason = "FAILED_PRECONDITION", pb.ERROR_REASON_STEP_IN_FLIGHT


class UnsupportedEncoding(ServeError):
    code, reason = "UNIMPLEMENTED", pb.ERROR_REASON_UNSUPPORTED_ENCODING


# ---------------------------------------------------------------------------- state
@dataclass
class Options:
    max_episode_steps: int = 0
    encoding: int = pb.FRAME_ENCODING_RAW
    jpeg_quality: int = 0


@dataclass
class ClientSession:
    sid: str
    row: int
    options: Options = field(default_factory=Options)
    elapsed: int = 0  # steps in the current episode
    episode: int = 0
    done: bool = False
    last_active: float = field(default_factory=time.monotonic)
    next_allowed: float = 0.0  # rate limit: earliest time of the next step


@dataclass
class StepOut:
    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    frame_index: int
    episode: int
    batch_size: int
    t_in: float  # perf_counter() when the request was queued


@dataclass
class _Pending:
    cs: ClientSession
    action: np.ndarray
    future: asyncio.Future[StepOut]
    t_in: float


class WorldHost:
    """One served world: its engine, its client sessions and their micro-batcher."""

    def __init__(
        self,
        name: str,
        world: WorldModel,
        max_sessions: int = 64,
        window_ms: float = 3.0,
        rate_limit: float = 0.0,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.name, self.world = name, world
        self.max_sessions = max_sessions
        self.window = window_ms / 1e3
        self.step_seconds = 0.0  # moving average of a batched step's wall time
        self.min_interval = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self.engine = on_torch_thread(world.session, batch=max_sessions, seed=0)
        self.executor = torch_thread()  # shared by every world of the process (see worldsim.threads)
        self.sessions: dict[str, ClientSession] = {}
        self.by_row: list[str | None] = [None] * max_sessions
        self.lock = asyncio.Lock()
        self.pending: dict[str, _Pending] = {}
        self._changed = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None
        self.steps = 0  # session-steps served
        self.batches = 0  # model calls (ticks)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._batcher = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except asyncio.CancelledError:
                pass
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(SessionNotFound("the server is shutting down"))
        self.pending.clear()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    @property
    def context_frames(self) -> int:
        return int(self.world.config.context_frames)

    @property
    def image_size(self) -> int:
        return int(self.world.config.codec.image_size)

    # ------------------------------------------------------------------ sessions
    def _reset_engine(
        self, cs: ClientSession, seed: int | None, frames: np.ndarray | None, actions: np.ndarray | None
    ) -> np.ndarray:
        """(worker thread) Start a new episode in the session's row; returns its first frame."""
        return self.engine.reset(frames=frames, actions=actions, seed=seed, rows=[cs.row])[cs.row]

    async def create(
        self,
        seed: int | None,
        options: Options,
        frames: np.ndarray | None = None,
        actions: np.ndarray | None = None,
    ) -> tuple[ClientSession, np.ndarray]:
        async with self.lock:
            if len(self.sessions) >= self.max_sessions:
                raise SessionLimit(f"world {self.name!r} already has its maximum of {self.max_sessions} sessions")
            row = len(self.sessions)
            cs = ClientSession(uuid.uuid4().hex, row, options)
            # A fresh seed when none is given: the row's RNG still holds its previous owner's state.
            seed = seed if seed is not None else _fresh_seed()
            try:
                frame = await self._call(self._reset_engine, cs, seed, frames, actions)
            except ValueError as e:
                raise InvalidArgument(str(e)) from e
            self.sessions[cs.sid] = cs
            self.by_row[row] = cs.sid
            self._changed.set()
        return cs, frame

    async def reset(
        self,
        cs: ClientSession,
        seed: int | None,
        frames: np.ndarray | None = None,
        actions: np.ndarray | None = None,
    ) -> np.ndarray:
        async with self.lock:
            self._check_open(cs)
            self._cancel_pending(cs, StepInFlight("the session was reset while this step waited"))
            try:
                frame = await self._call(self._reset_engine, cs, seed, frames, actions)
            except ValueError as e:
                raise InvalidArgument(str(e)) from e
            cs.elapsed, cs.done, cs.last_active = 0, False, time.monotonic()
            cs.episode += 1
        return frame

    async def close(self, cs: ClientSession, why: str = "the session was closed") -> bool:
        """Free the session's row (moving the last session into it); False if it was not open."""
        async with self.lock:
            if self.sessions.pop(cs.sid, None) is None:
                return False
            self._cancel_pending(cs, SessionNotFound(why))
            last = len(self.sessions)  # the row of the last session, now that one is gone
            if cs.row != last:
                moved_sid = self.by_row[last]
                assert moved_sid is not None
                await self._call(self.engine.move_row, last, cs.row)
                self.sessions[moved_sid].row, self.by_row[cs.row] = cs.row, moved_sid
            self.by_row[last] = None
            self._changed.set()
        return True

    def _check_open(self, cs: ClientSession) -> None:
        if cs.sid not in self.sessions:
            raise SessionNotFound(f"session {cs.sid!r} was closed")

    def _cancel_pending(self, cs: ClientSession, error: ServeError) -> None:
        p = self.pending.pop(cs.sid, None)
        if p is not None and not p.future.done():
            p.future.set_exception(error)

    def idle(self, timeout: float) -> list[ClientSession]:
        """Sessions without a request for more than ``timeout`` seconds and no step waiting."""
        now = time.monotonic()
        return [cs for sid, cs in self.sessions.items() if now - cs.last_active > timeout and sid not in self.pending]

    # ------------------------------------------------------------------ stepping
    async def step(self, cs: ClientSession, action: np.ndarray) -> StepOut:
        """Queue one validated action for ``cs``; resolves when its batch has run."""
        self._check_open(cs)
        if cs.done:
            raise EpisodeEnded("the episode has ended (terminated or truncated): call Reset before stepping again")
        if cs.sid in self.pending:
            raise StepInFlight("a step for this session is already waiting; send one action at a time")
        cs.last_active = time.monotonic()
        if self.min_interval:  # per-session rate limit: pace the client, do not drop its step
            now = time.monotonic()
            if now < cs.next_allowed:
                await asyncio.sleep(cs.next_allowed - now)
                self._check_open(cs)
                if cs.sid in self.pending:
                    raise StepInFlight("a step for this session is already waiting; send one action at a time")
            cs.next_allowed = max(now, cs.next_allowed) + self.min_interval
        fut: asyncio.Future[StepOut] = asyncio.get_running_loop().create_future()
        self.pending[cs.sid] = _Pending(cs, action, fut, time.perf_counter())
        self._changed.set()
        try:
            return await fut
        except asyncio.CancelledError:  # the client went away before its batch ran: drop the action
            p = self.pending.get(cs.sid)
            if p is not None and p.future is fut:
                del self.pending[cs.sid]
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self._changed.clear()
                await self._changed.wait()
            deadline = loop.time() + max(self.window, min(0.1 * self.step_seconds, 0.05))
            while len(self.pending) < len(self.sessions) and (remaining := deadline - loop.time()) > 0:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            async with self.lock:
                batch = sorted(self.pending.values(), key=lambda p: p.cs.row)
                self.pending.clear()
                if batch:
                    await self._tick(batch)

    async def _tick(self, batch: list[_Pending]) -> None:
        rows = [p.cs.row for p in batch]
        actions = np.stack([p.action for p in batch])
        t0 = time.perf_counter()
        try:
            res = await self._call(self.engine.step, actions, rows=rows)
        except Exception as e:  # a model failure fails this batch, not the server
            log.exception("batched step of %d sessions on %s failed", len(batch), self.name)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        dt = time.perf_counter() - t0
        self.step_seconds = dt if self.batches == 0 else 0.8 * self.step_seconds + 0.2 * dt
        self.batches += 1
        self.steps += len(batch)
        for p, frame, reward, term in zip(batch, res.frames, res.rewards, res.terminated):
            cs = p.cs
            cs.elapsed += 1
            terminated = bool(term)
            truncated = bool(time_limit_reached(cs.elapsed, cs.options.max_episode_steps))
            cs.done = terminated or truncated
            cs.last_active = time.monotonic()
            if not p.future.done():
                out = StepOut(frame, float(reward), terminated, truncated, cs.elapsed, cs.episode, len(batch), p.t_in)
                p.future.set_result(out)


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])
