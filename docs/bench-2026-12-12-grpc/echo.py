"""A bare grpc.aio bidi echo (no worldsim code), 12 KB replies, the client as RemoteWorld streams
(sync stub, queue-fed request iterator, in its own process). The server answers each message
after DELAY: none, asyncio.sleep(10 ms) on the loop, or time.sleep(10 ms) on an executor thread.
usage: python echo.py; prints the median round trip minus the delay for each mode."""

import asyncio
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

EX = ThreadPoolExecutor(1)
MODE = {"v": "none"}


async def play(requests, context):
    loop = asyncio.get_running_loop()
    async for _ in requests:
        if MODE["v"] == "loop":
            await asyncio.sleep(0.010)
        elif MODE["v"] == "thread":
            await loop.run_in_executor(None, time.sleep, 0.010)
        yield bytes(12288)


def serve(ready, port):
    async def main():
        s = grpc.aio.server()
        h = grpc.method_handlers_generic_handler("echo.Echo", {"Play": grpc.stream_stream_rpc_method_handler(play)})
        s.add_generic_rpc_handlers((h,))
        port[0] = s.add_insecure_port("127.0.0.1:0")
        await s.start()
        ready.set()
        await s.wait_for_termination()

    asyncio.run(main())


CLIENT = r"""
import sys, time, queue, json, grpc
ch = grpc.insecure_channel(sys.argv[1])
call = ch.stream_stream("/echo.Echo/Play")
q = queue.Queue(); it = call(iter(q.get, None)); rtt = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); q.put(b"x" * 16); next(it); rtt.append((time.perf_counter() - t) * 1e3)
print(json.dumps(rtt), flush=True)
import os; os._exit(0)  # a sync stream left open can hang the interpreter's exit
"""
if __name__ == "__main__":
    ready, port = threading.Event(), [0]
    threading.Thread(target=serve, args=(ready, port), daemon=True).start()
    ready.wait()
    for mode, delay in (
        ("none", 0.0),
        ("loop", 10.0),
        ("thread", 10.0),
        ("none", 0.0),
        ("loop", 10.0),
        ("thread", 10.0),
    ):
        MODE["v"] = mode
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, f"127.0.0.1:{port[0]}", "300"], capture_output=True, text=True, timeout=60
        )
        rtt = json.loads(out.stdout.strip().splitlines()[-1])[50:]
        print(f"{mode:7s} round trip minus the delay: {np.median(rtt) - delay:.3f} ms")
