"""Server-process CPU per Play frame, engine step replaced by a 10 ms sleep (no torch).
usage: python cpu.py [N_STEPS]; prints server CPU ms/frame, client CPU ms/frame, rtt p50.
Run from the repo root. VARIANT=rw (Play on context.read/write), noguard (RequestGuard bypassed) or
rw,noguard; PROF=1 profiles the server's event loop, CPROF=1 the client's main thread."""

import json
import os
import subprocess
import sys
import time

import grpc
import numpy as np

from worldsim.engine.session import Session, StepResult
from worldsim.engine.world import WorldModel
from worldsim.serve import server as S
from worldsim.serve.interceptors import Refusal, RequestGuard
from worldsim.serve.server import BackgroundServer, ServeConfig
from worldsim.threads import on_torch_thread

N = int(sys.argv[1]) if len(sys.argv) > 1 else 600
marks = {}
count = [0]


def fake_step(self, actions, rows=None):
    count[0] += 1
    if count[0] == 60:
        marks["a"] = (time.process_time(), time.perf_counter())
    if count[0] == N - 10:
        marks["b"] = (time.process_time(), time.perf_counter())
    time.sleep(0.010)
    b = len(rows) if rows is not None else self.batch
    return StepResult(
        np.zeros((b, 64, 64, 3), np.uint8), np.zeros(b, np.float32), np.zeros(b, bool), 10.0, np.zeros(b, np.float32)
    )


Session.step = fake_step
V = os.environ.get("VARIANT", "")

if "rw" in V:

    async def Play(self, request_iterator, context):
        while True:
            req = await context.read()
            if req is grpc.aio.EOF:
                return
            if isinstance(req, Refusal):
                await RequestGuard._refuse(None, req, context)
            await context.write(await self._guard(context, self._step(req)))

    S.WorldService.Play = Play
if "noguard" in V:

    async def ic(self, continuation, details):
        return await continuation(details)

    RequestGuard.intercept_service = ic
model = on_torch_thread(WorldModel.load, "envs/cartpole/cartpole.safetensors")
CLIENT = r"""
import sys, time, json, resource
import numpy as np
from worldsim.client import RemoteWorld
env = RemoteWorld(sys.argv[1], "bench", seed=0)
n = int(sys.argv[2]); rtt = []
import os, cProfile, pstats
if os.environ.get("CPROF"):
    pr = cProfile.Profile(); pr.enable()
for i in range(n):
    if i == 60: c0 = resource.getrusage(resource.RUSAGE_SELF)
    if i == n - 10: c1 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter(); env.step(0); rtt.append((time.perf_counter() - t) * 1e3)
env.close()
cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / (n - 70) * 1e3
if os.environ.get("CPROF"):
    pr.disable(); pstats.Stats(pr, stream=sys.stderr).sort_stats("tottime").print_stats(18)
print(json.dumps({"client_cpu_ms": cpu, "rtt_p50": float(np.median(rtt[60:]))}))
"""
with BackgroundServer({"bench": model}, ServeConfig(port=0, idle_timeout=0)) as srv:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    if os.environ.get("PROF"):
        srv.loop.call_soon_threadsafe(prof.enable)
    out = subprocess.run([sys.executable, "-c", CLIENT, srv.address, str(N)], capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-2000:])
        sys.exit(1)
    if os.environ.get("CPROF"):
        print(out.stderr[-6000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if os.environ.get("PROF"):
        import threading

        ev = threading.Event()
        srv.loop.call_soon_threadsafe(lambda: (prof.disable(), ev.set()))
        ev.wait()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
(pa, wa), (pb_, wb) = marks["a"], marks["b"]
steps = N - 70
print(
    f"server CPU {1e3 * (pb_ - pa) / steps:.3f} ms/frame  client CPU {r['client_cpu_ms']:.3f} ms/frame  rtt p50 {r['rtt_p50']:.2f} ms  wall/frame {1e3 * (wb - wa) / steps:.2f}"
)
