"""Client variants against a bare grpc.aio server (no worldsim code) that answers each message
10 ms later (asyncio.sleep on its loop), each client in its own process, 300 round trips (the
first 50 dropped), two rounds: a sync bidi stream fed by a queue (what RemoteWorld does), a sync
unary call, an aio bidi stream driven by an async loop, and the same aio stream driven one
exchange at a time from sync code (``run_until_complete``, what a sync gym env could do).
usage: python client_variants.py; prints the median round trip minus the 10 ms (and the p90)."""

import asyncio
import json
import subprocess
import sys
import threading

import grpc
import numpy as np


async def play(requests, context):
    async for _ in requests:
        await asyncio.sleep(0.010)
        yield bytes(12288)


async def unary(req, context):
    await asyncio.sleep(0.010)
    return bytes(12288)


def serve(ready, port):
    async def main():
        s = grpc.aio.server()
        h = grpc.method_handlers_generic_handler(
            "echo.Echo",
            {"Play": grpc.stream_stream_rpc_method_handler(play), "Step": grpc.unary_unary_rpc_method_handler(unary)},
        )
        s.add_generic_rpc_handlers((h,))
        port[0] = s.add_insecure_port("127.0.0.1:0")
        await s.start()
        ready.set()
        await s.wait_for_termination()

    asyncio.run(main())


CLIENTS = {
    "sync-stream": r"""
import sys, time, queue, json, grpc
ch = grpc.insecure_channel(sys.argv[1])
call = ch.stream_stream("/echo.Echo/Play")
q = queue.Queue(); it = call(iter(q.get, None)); rtt = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); q.put(b"x" * 16); next(it); rtt.append((time.perf_counter() - t) * 1e3)
print(json.dumps(rtt), flush=True)
import os; os._exit(0)
""",
    "sync-unary": r"""
import sys, time, json, grpc
ch = grpc.insecure_channel(sys.argv[1])
call = ch.unary_unary("/echo.Echo/Step"); rtt = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); call(b"x" * 16); rtt.append((time.perf_counter() - t) * 1e3)
print(json.dumps(rtt), flush=True)
import os; os._exit(0)
""",
    "aio-stream": r"""
import sys, time, json, asyncio, grpc
async def main():
    ch = grpc.aio.insecure_channel(sys.argv[1])
    call = ch.stream_stream("/echo.Echo/Play")()
    rtt = []
    for i in range(int(sys.argv[2])):
        t = time.perf_counter(); await call.write(b"x" * 16); await call.read(); rtt.append((time.perf_counter() - t) * 1e3)
    return rtt
loop = asyncio.new_event_loop()
print(json.dumps(loop.run_until_complete(main())), flush=True)
import os; os._exit(0)
""",
    "aio-stream-sync-calls": r"""
import sys, time, json, asyncio, grpc
loop = asyncio.new_event_loop()
async def open_():
    ch = grpc.aio.insecure_channel(sys.argv[1])
    return ch, ch.stream_stream("/echo.Echo/Play")()
ch, call = loop.run_until_complete(open_())
async def ex():
    await call.write(b"x" * 16); return await call.read()
rtt = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); loop.run_until_complete(ex()); rtt.append((time.perf_counter() - t) * 1e3)
print(json.dumps(rtt), flush=True)
import os; os._exit(0)
""",
}
if __name__ == "__main__":
    ready, port = threading.Event(), [0]
    threading.Thread(target=serve, args=(ready, port), daemon=True).start()
    ready.wait()
    for _round in range(2):
        for name, code in CLIENTS.items():
            out = subprocess.run(
                [sys.executable, "-c", code, f"127.0.0.1:{port[0]}", "300"], capture_output=True, text=True, timeout=60
            )
            if out.returncode:
                print(name, out.stderr[-500:])
                continue
            rtt = json.loads(out.stdout.strip().splitlines()[-1])[50:]
            print(
                f"{name:22s} round trip minus 10 ms: {np.median(rtt) - 10:.3f} ms  (p90 {np.percentile(rtt, 90) - 10:.3f})"
            )
