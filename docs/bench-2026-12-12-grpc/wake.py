"""Thread wake-up latency on this machine, no gRPC: after a 10 ms sleep on a worker thread, how
long until the waiting side runs. (1) asyncio's run_in_executor round trip, each way; (2) a
threading.Event; (3) a pipe watched by epoll (what an asyncio loop waits on).
usage: python wake.py"""
import asyncio
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def executor_hop() -> None:
    ex = ThreadPoolExecutor(1)

    def work() -> tuple[float, float]:
        t = time.perf_counter()
        time.sleep(0.01)
        return t, time.perf_counter()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        there, back = [], []
        for _ in range(300):
            t0 = time.perf_counter()
            s0, s1 = await loop.run_in_executor(ex, work)
            there.append(s0 - t0)
            back.append(time.perf_counter() - s1)
        print(f"run_in_executor: loop -> thread {np.median(there) * 1e3:.3f} ms, thread -> loop {np.median(back) * 1e3:.3f} ms")

    asyncio.run(main())


def raw_wakes() -> None:
    ev, ts, d = threading.Event(), [], []

    def setter() -> None:
        for _ in range(200):
            time.sleep(0.01)
            ts.append(time.perf_counter())
            ev.set()
            time.sleep(0.002)

    th = threading.Thread(target=setter)
    th.start()
    for _ in range(200):
        ev.wait()
        d.append(time.perf_counter() - ts[-1])
        ev.clear()
    th.join()
    print(f"threading.Event wake {np.median(d) * 1e3:.3f} ms")
    r, w = os.pipe()
    ep = select.epoll()
    ep.register(r, select.EPOLLIN)
    ts, d = [], []

    def writer() -> None:
        for _ in range(200):
            time.sleep(0.01)
            ts.append(time.perf_counter())
            os.write(w, b"x")
            time.sleep(0.002)

    th = threading.Thread(target=writer)
    th.start()
    for _ in range(200):
        ep.poll()
        d.append(time.perf_counter() - ts[-1])
        os.read(r, 1)
    th.join()
    print(f"pipe + epoll wake {np.median(d) * 1e3:.3f} ms")


if __name__ == "__main__":
    executor_hop()
    raw_wakes()
