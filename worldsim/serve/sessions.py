"""Client sessions of one world, stepped together in micro-batches.

Design:

- One engine :class:`~worldsim.engine.Session` per world with ``max_sessions`` rows. Each client
  session owns one row; active sessions are kept *compact* in rows ``0..n-1`` (closing a session
  moves the last row into the hole), so a tick where every client asked steps a prefix view of
  the KV cache with no copy.
- Step requests are queued. The batcher waits for the first request, then up to ``window_ms``
  more or until every active session has asked, and runs ONE batched ``step(actions, rows)`` for
  exactly the rows that asked: a row never advances without its client's action.
- All model work runs on one worker thread (off the event loop), in submission order; row
  bookkeeping happens on the event loop under a lock that a dispatch holds too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldsim.engine.world import StepResult, WorldModel

log = logging.getLogger(__name__)


class SessionLimit(Exception):
    """Too many sessions on this world."""


class EpisodeOver(Exception):
    """Step after the episode ended (terminated or truncated) without a reset."""


@dataclass
class ClientSession:
    sid: str
    row: int
    encoding: int = 0
    max_episode_steps: int = 0
    elapsed: int = 0
    episodes: int = 1
    done: bool = False
    last_active: float = field(default_factory=time.monotonic)
    next_allowed: float = 0.0


@dataclass
class StepOut:
    frame: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    frame_index: int
    latency_ms: float


class WorldHost:
    def __init__(
        self, name: str, world: WorldModel, max_sessions: int = 64, window_ms: float = 3.0, rate_limit: float = 0.0
    ) -> None:
        self.name, self.world = name, world
        self.max_sessions = max_sessions
        self.window = window_ms / 1e3
        self.min_interval = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self.engine = world.session(batch=max_sessions, seed=0)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self.sessions: dict[str, ClientSession] = {}
        self.by_row: list[str | None] = [None] * max_sessions
        self.lock = asyncio.Lock()
        self.pending: dict[str, tuple[np.ndarray, asyncio.Future[StepOut], float]] = {}
        self.wake = asyncio.Event()
        self.batcher: asyncio.Task[None] | None = None
        self.steps = 0
        self.batches = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.batcher = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    # ------------------------------------------------------------------ sessions
    async def create(self, seed: int | None, encoding: int, max_episode_steps: int) -> tuple[ClientSession, np.ndarray]:
        async with self.lock:
            if len(self.sessions) >= self.max_sessions:
                raise SessionLimit(f"world {self.name!r} already has {self.max_sessions} sessions")
            row = len(self.sessions)
            cs = ClientSession(uuid.uuid4().hex, row, encoding, max_episode_steps)
            frames = await self._call(self.engine.reset, seed=seed if seed is not None else _fresh_seed(), rows=[row])
            self.sessions[cs.sid] = cs
            self.by_row[row] = cs.sid
        return cs, frames[row]

    async def reset(self, cs: ClientSession, seed: int | None) -> np.ndarray:
        async with self.lock:
            self._cancel_pending(cs, "the session was reset")
            frames = await self._call(
                self.engine.reset, seed=seed if seed is not None else _fresh_seed(), rows=[cs.row]
            )
            cs.elapsed, cs.done, cs.last_active = 0, False, time.monotonic()
            cs.episodes += 1
        return frames[cs.row]

    async def close(self, cs: ClientSession) -> None:
        async with self.lock:
            if self.sessions.pop(cs.sid, None) is None:
                return
            self._cancel_pending(cs, "the session was closed")
            last = len(self.sessions)  # the row of the last active session before removal
            if cs.row != last:
                moved = self.sessions[self.by_row[last]]  # type: ignore[index]
                await self._call(self.engine.move_row, last, cs.row)
                moved.row = cs.row
                self.by_row[cs.row] = moved.sid
            self.by_row[last] = None

    def _cancel_pending(self, cs: ClientSession, why: str) -> None:
        item = self.pending.pop(cs.sid, None)
        if item is not None and not item[1].done():
            item[1].set_exception(EpisodeOver(why))

    def evict_idle(self, timeout: float) -> list[str]:
        now = time.monotonic()
        return [sid for sid, cs in self.sessions.items() if now - cs.last_active > timeout and sid not in self.pending]

    # ------------------------------------------------------------------ stepping
    async def step(self, cs: ClientSession, action: np.ndarray) -> StepOut:
        """Queue one (validated) action; resolves when its batch has run."""
        if cs.done:
            raise EpisodeOver("the episode has ended: call Reset before stepping again")
        if cs.sid in self.pending:
            raise EpisodeOver("a step for this session is already in flight")
        now = time.monotonic()
        if self.min_interval and now < cs.next_allowed:
            await asyncio.sleep(cs.next_allowed - now)  # per-session rate limit: pace, don't drop
        cs.next_allowed = time.monotonic() + self.min_interval
        fut: asyncio.Future[StepOut] = asyncio.get_running_loop().create_future()
        self.pending[cs.sid] = (action, fut, time.perf_counter())
        cs.last_active = time.monotonic()
        self.wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            deadline = time.monotonic() + self.window
            while len(self.pending) < len(self.sessions) and time.monotonic() < deadline:
                await asyncio.sleep(0.0005)
            self.wake.clear()
            async with self.lock:
                batch = [(self.sessions[sid], item) for sid, item in self.pending.items() if sid in self.sessions]
                self.pending.clear()
                if not batch:
                    continue
                batch.sort(key=lambda x: x[0].row)
                rows = [cs.row for cs, _ in batch]
                actions = np.stack([item[0] for _, item in batch])
                try:
                    res: StepResult = await self._call(self.engine.step, actions, rows=rows)
                except Exception as e:  # a model failure fails this batch, not the server
                    log.exception("batched step failed")
                    for _, (_, fut, _) in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
            self.batches += 1
            self.steps += len(batch)
            now = time.perf_counter()
            for i, (cs, (_, fut, t_in)) in enumerate(batch):
                cs.elapsed += 1
                term = bool(res.terminated[i])
                trunc = bool(cs.max_episode_steps and cs.elapsed >= cs.max_episode_steps and not term)
                cs.done = term or trunc
                if not fut.done():
                    fut.set_result(
                        StepOut(res.frames[i], float(res.rewards[i]), term, trunc, cs.elapsed, (now - t_in) * 1e3)
                    )


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])
