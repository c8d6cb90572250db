"""Per-frame timeline of one Play stream, step = 10 ms sleep: client send -> server _step entry -> engine start -> engine end -> _step exit -> client recv.
perf_counter is CLOCK_MONOTONIC, comparable across processes. Run from the repo root.
FAST=1: a lone session steps without the batcher task (the idea tried and not adopted)."""

import json
import os
import subprocess
import sys
import time

import numpy as np

from worldsim.engine.session import Session, StepResult
from worldsim.engine.world import WorldModel
from worldsim.serve import server as S
from worldsim.serve import sessions as SS
from worldsim.serve.server import BackgroundServer, ServeConfig
from worldsim.threads import on_torch_thread

T = {"in": [], "s0": [], "s1": [], "out": []}


def fake_step(self, actions, rows=None):
    T["s0"].append(time.perf_counter())
    time.sleep(0.010)
    b = len(rows) if rows is not None else self.batch
    r = StepResult(
        np.zeros((b, 64, 64, 3), np.uint8), np.zeros(b, np.float32), np.zeros(b, bool), 10.0, np.zeros(b, np.float32)
    )
    T["s1"].append(time.perf_counter())
    return r


Session.step = fake_step
orig = S.WorldService._step


async def _step(self, req):
    T["in"].append(time.perf_counter())
    f = await orig(self, req)
    T["out"].append(time.perf_counter())
    return f


S.WorldService._step = _step

T.update({"tick0": [], "tick1": [], "hs1": [], "fr0": []})
otick = SS.WorldHost._tick


async def tick(self, batch):
    T["tick0"].append(time.perf_counter())
    await otick(self, batch)
    T["tick1"].append(time.perf_counter())


SS.WorldHost._tick = tick
if os.environ.get("FAST"):
    import asyncio

    base_step = SS.WorldHost.step

    async def fast(self, cs, action):
        if (
            len(self.sessions) == 1
            and not self.pending
            and not self.lock.locked()
            and not cs.done
            and not self.min_interval
            and cs.sid in self.sessions
        ):
            cs.last_active = time.monotonic()
            fut = asyncio.get_running_loop().create_future()
            p = SS._Pending(cs, action, fut, time.perf_counter())
            async with self.lock:
                await asyncio.shield(self._tick([p]))
            return await fut
        return await base_step(self, cs, action)

    SS.WorldHost.step = fast
ohs = SS.WorldHost.step


async def hstep(self, cs, a):
    r = await ohs(self, cs, a)
    T["hs1"].append(time.perf_counter())
    return r


SS.WorldHost.step = hstep
model = on_torch_thread(WorldModel.load, "envs/cartpole/cartpole.safetensors")
CLIENT = r"""
import sys, time, json
from worldsim.client import RemoteWorld
env = RemoteWorld(sys.argv[1], "bench", seed=0)
a, b = [], []
for i in range(int(sys.argv[2])):
    a.append(time.perf_counter()); env.step(0); b.append(time.perf_counter())
env.close()
print(json.dumps({"send": a, "recv": b}))
"""
N = 400
with BackgroundServer({"bench": model}, ServeConfig(port=0, idle_timeout=0)) as srv:
    out = subprocess.run([sys.executable, "-c", CLIENT, srv.address, str(N)], capture_output=True, text=True)
c = json.loads(out.stdout.strip().splitlines()[-1])
send, recv = np.array(c["send"]), np.array(c["recv"])
k = len(T["s0"]) - N  # warm-up steps of the probe, if any
s0, s1 = np.array(T["s0"][k:]), np.array(T["s1"][k:])
i0, o0 = np.array(T["in"][-N:]), np.array(T["out"][-N:])
sl = slice(50, None)
t0, t1, h1 = (np.array(T[k][-N:]) for k in ("tick0", "tick1", "hs1"))


def med(x):
    return float(np.median(x[sl])) * 1e3


print(f"client send -> server _step entry  {med(i0 - send):.3f} ms")
print(f"_step entry -> engine start         {med(s0 - i0):.3f}")
print(f"  of which entry -> tick start      {med(t0 - i0):.3f}")
print(f"  of which tick start -> engine     {med(s0 - t0):.3f}")
print(f"engine (sleep 10 ms)                {med(s1 - s0):.3f}")
print(f"engine end -> _step exit            {med(o0 - s1):.3f}")
print(f"  of which engine end -> tick end  {med(t1 - s1):.3f}")
print(f"  of which tick end -> host.step ret {med(h1 - t1):.3f}")
print(f"  of which host.step ret -> exit     {med(o0 - h1):.3f}")
print(f"_step exit -> client recv           {med(recv - o0):.3f}")
print(f"client recv -> next send            {float(np.median(send[51:] - recv[50:-1])) * 1e3:.3f}")
print(f"round trip                          {med(recv - send):.3f}")
