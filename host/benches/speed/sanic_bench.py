"""Sanic's background tasks under the speed benchmark's workloads.

Run by `cargo bench -p taskhost --bench speed` in a venv it makes (Sanic
and uvloop pinned below), so that Sanic's column is measured in the same
run as taskhost's and raw wasmtime's. It starts a real Sanic app on
loopback (one process, one loop: uvloop, as Sanic picks it), measures from
an `after_server_start` listener, prints one JSON object and stops the app.

    python sanic_bench.py '{"spawn": 20000, "burst": 100000, "cancel": 2000, "join": 2000, "idle": 10000}'

Each workload matches one of taskhost's:
- spawn: `app.add_task(coro, name=...)` to the coroutine's first line, one
  task at a time (taskhost: start to guest entered);
- burst: named trivial tasks, 64 in flight, awaited, purged after each
  batch (taskhost: trivial tasks/s, 64 in flight per worker);
- cancel: `await app.cancel_task(name)` of a task sleeping on the same loop
  (taskhost: a guest's `cancel-task` of a sleeper on its own worker); the
  warning Sanic logs per cancelled task is turned off, as taskhost's
  lifecycle log is in the bench;
- join: `await app.add_task(child(), name=...)` of a trivial task, start
  to its end (taskhost: a guest's start of a `noop` child and `join` of
  it);
- idle: resident memory growth per sleeping named task (VmRSS).
"""

import asyncio
import gc
import json
import logging
import socket
import sys
import time

from sanic import Sanic

SANIC_VERSION = "25.12.1"

counts = json.loads(sys.argv[1])
app = Sanic("speed", configure_logging=False)
results = {}


@app.get("/")
async def index(_request):
    # Sanic refuses to start an app without a route; this one is not used.
    from sanic.response import text

    return text("ok")


def resident_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def percentiles(samples):
    samples = sorted(samples)
    at = lambda q: samples[round((len(samples) - 1) * q)]
    return {"p50_us": at(0.5) / 1e3, "p99_us": at(0.99) / 1e3}


async def spawn(n):
    entered = []
    for i in range(n):
        seen = []

        async def first_line():
            seen.append(time.perf_counter_ns())

        begun = time.perf_counter_ns()
        task = app.add_task(first_line(), name=f"spawn-{i}")
        await task
        entered.append(seen[0] - begun)
        if i % 1000 == 999:
            app.purge_tasks()
    app.purge_tasks()
    return percentiles(entered)


async def burst(n):
    async def noop():
        return None

    begun = time.perf_counter()
    done = 0
    while done < n:
        batch = [
            app.add_task(noop(), name=f"burst-{done + i}")
            for i in range(min(64, n - done))
        ]
        done += len(batch)
        for task in batch:
            await task
        app.purge_tasks()
    return {"per_second": n / (time.perf_counter() - begun)}


async def cancel(n):
    logging.getLogger("sanic.error").setLevel(logging.ERROR)
    samples = []
    for i in range(n):
        asleep = asyncio.Event()

        async def sleeper():
            asleep.set()
            await asyncio.sleep(3600)

        name = f"sleeper-{i}"
        app.add_task(sleeper(), name=name)
        await asleep.wait()
        # As the taskhost guest does: let the sleeper reach its sleep.
        await asyncio.sleep(0.001)
        begun = time.perf_counter_ns()
        await app.cancel_task(name)
        samples.append(time.perf_counter_ns() - begun)
        app.purge_tasks()
    return percentiles(samples)


async def join(n):
    samples = []

    async def child():
        return None

    for i in range(n):
        begun = time.perf_counter_ns()
        await app.add_task(child(), name=f"child-{i}")
        samples.append(time.perf_counter_ns() - begun)
        app.purge_tasks()
    return percentiles(samples)


async def idle(n):
    gc.collect()
    before = resident_bytes()
    asleep = 0

    async def sleeper():
        nonlocal asleep
        asleep += 1
        await asyncio.sleep(3600)

    for i in range(n):
        app.add_task(sleeper(), name=f"idle-{i}")
    while asleep < n:
        await asyncio.sleep(0.01)
    gc.collect()
    per_task = (resident_bytes() - before) / n
    for i in range(n):
        await app.cancel_task(f"idle-{i}")
    app.purge_tasks()
    return {"bytes_per_task": per_task}


@app.after_server_start
async def measure(app):
    try:
        results["loop"] = type(asyncio.get_running_loop()).__module__
        results["sanic"] = SANIC_VERSION
        for name, workload in [
            ("spawn", spawn),
            ("burst", burst),
            ("cancel", cancel),
            ("join", join),
            ("idle", idle),
        ]:
            if counts.get(name):
                results[name] = await workload(counts[name])
    except Exception as error:  # reported, then the app stops
        results["error"] = repr(error)
    app.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    app.run(
        host="127.0.0.1",
        port=free_port(),
        single_process=True,
        access_log=False,
        motd=False,
    )
    print(json.dumps(results))
    sys.exit(1 if "error" in results else 0)
