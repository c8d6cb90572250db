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
        print(
            f"run_in_executor: loop -> thread {np.median(there) * 1e3:.3f} ms, thread -> loop {np.median(back) * 1e3:.3f} ms"
        )

    asyncio.run(main())


def median_wake(signal, wait, n: int = 200) -> float:
    """ms from ``signal()`` on a thread that slept 10 ms to the end of ``wait()`` here."""
    ts, d = [], []

    def signaller() -> None:
        for _ in range(n):
            time.sleep(0.01)
            ts.append(time.perf_counter())
            signal()
            time.sleep(0.002)

    th = threading.Thread(target=signaller)
    th.start()
    for _ in range(n):
        wait()
        d.append(time.perf_counter() - ts[-1])
    th.join()
    return float(np.median(d)) * 1e3


def raw_wakes() -> None:
    ev = threading.Event()
    print(f"threading.Event wake {median_wake(ev.set, lambda: (ev.wait(), ev.clear())):.3f} ms")
    r, w = os.pipe()
    ep = select.epoll()
    ep.register(r, select.EPOLLIN)
    print(f"pipe + epoll wake {median_wake(lambda: os.write(w, b'x'), lambda: (ep.poll(), os.read(r, 1))):.3f} ms")


if __name__ == "__main__":
    executor_hop()
    raw_wakes()
