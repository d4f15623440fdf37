"""The seed's background tasks (Sanic's examples) as a Python plugin, and
probes the tests use."""

from typing import Any, Optional

from taskhost import App, Cancelled, Restart, task


@task
def slow_work(app: App, ms: int = 100) -> None:
    """Sleeps, then says so."""
    app.sleep(ms)
    app.info("slow work done")


@task
def even_slower(app: App, num: int = 10) -> int:
    """Sleeps num x 10 ms, logging as it goes; returns num."""
    for i in range(num):
        app.sleep(10)
        app.debug(f"step {i}")
    app.info(f"even slower: {num} steps")
    return num


@task
def notify_server_started_after_five_seconds(app: App, delay_ms: int = 5000) -> None:
    """Waits, then says the server started (Sanic's example)."""
    app.sleep(delay_ms)
    app.info("Server successfully started!")


@task
def variables(app: App) -> dict:
    """Reads the plugin's variables through wasi:config/store."""
    return {
        "url": app.variable("db_url"),
        "missing": app.variable("no_such_variable", "fallback"),
        "all": app.variables(),
    }


@task
def place(app: App) -> dict:
    """Starts `noop` in queue `held` (key, priority, a 2 s delay) and reads
    its state back."""
    app.add_task("noop", None, name="placed", queue="held", key="acme",
                 priority=3, delay_ms=2000)
    return {"state": app.get_task("placed").state}


@task
def square(app: App, x: int, ms: int = 0) -> int:
    """Returns x * x after sleeping `ms`: the child of `fan_out`."""
    if ms:
        app.sleep(ms)
    return x * x


@task
def fan_out(app: App, n: int, ms: int = 0) -> int:
    """Starts `n` children of `square` (x = 1..n), joins them all and
    returns the sum of their results."""
    children = [
        app.add_task("square", {"x": x, "ms": ms}, child=True) for x in range(1, n + 1)
    ]
    return sum(info.value() for info in app.join_all(children))


@task
def supervise(app: App) -> int:
    """Starts `boom` as task `supervised`, restarted on failure (at most
    twice within a minute, 10 ms apart): it fails a third time for good."""
    return app.add_task("boom", None, name="supervised",
                        restart=Restart("on-failure", intensity=2, period_ms=60_000,
                                        initial_ms=10, max_ms=100))


@task
def auto_inject(app: App, delay_ms: int = 0) -> dict:
    """Reports what the injected app knows about itself."""
    app.sleep(delay_ms)
    info = {"app": app.name(), "worker": app.worker(), "greeting": app.config("greeting")}
    app.info(f"app {info['app']} on worker {info['worker']}")
    return info


@task
def sleeper(app: App, ms: int = 60000, marker: Optional[str] = None) -> str:
    """Sleeps; when cancelled, cleans up in `finally` even under a broad
    `except Exception:`, and records it in the bucket `cleanup`."""
    try:
        try:
            app.sleep(ms)
        except Exception:
            app.error("a broad except caught the cancel: a bug in the SDK")
            raise
    finally:
        if marker:
            app.kv("cleanup").set(marker, "cleaned up")
        app.info("cleanup ran")
    return "slept"


@task
def feed(app: App, request: Optional[dict] = None, events: Optional[int] = None,
         event: str = "my.custom.event") -> int:
    """The seed's websocket handler: starts receiver:<id>, sends "A message"
    on each `event`; its cleanup cancels the receiver and purges, however
    it ended (the client closing cancels it). Without a websocket
    `request`, it handles `events` events the same way."""
    connection = app.connection(request) if request else None
    receiver_name = f"receiver:{connection.id if connection else app.id()}"
    app.add_task("receiver", {"connection": connection.id} if connection else {},
                 name=receiver_name)
    handled = 0
    try:
        while events is None or handled < events:
            app.wait_event(event)
            if connection:
                connection.send("A message")
            handled += 1
        return handled
    finally:
        try:
            app.cancel_task(receiver_name)
        finally:
            app.purge_tasks()


@task
def receiver(app: App, connection: Optional[int] = None, event: str = "message") -> None:
    """Logs what the client of `connection` sends until it is over, or
    (without one) every payload of `event`: the receiving half of `feed`."""
    if connection is not None:
        for message in app.connection(connection):
            app.info(f"received {message}")
        return
    while True:
        payload = app.wait_event(event)
        if payload is not None:
            app.info(f"received {payload}")


@task
def fetch_text(app: App, url: str, body: Any = None) -> dict:
    """GETs `url` (POSTs `body` as JSON if given) with app.fetch; app.toml
    must allow it. Returns {status, body}."""
    response = app.fetch(url, "POST" if body is not None else "GET", body=body)
    app.info(f"fetched {url}: {response.status}")
    return {"status": response.status, "body": response.text}


@task
def noop(app: App) -> None:
    """Does nothing: what a task costs by itself (the speed bench)."""


@task
def idle(app: App) -> None:
    """Sleeps until cancelled: an idle task (the speed bench)."""
    app.sleep(2**63)


@task
def spinner(app: App) -> None:
    """Spins without a host call: only a forced cancel stops it."""
    while True:
        pass


@task
def typed(app: App, num: int, label: str, flag: Optional[bool] = None) -> dict:
    """Echoes typed arguments."""
    return {"num": num, "label": label, "flag": flag}


@task
def boom(app: App) -> None:
    """Raises, uncaught: the task fails with the traceback."""
    helper_that_fails()


def helper_that_fails() -> None:
    raise ValueError("the python guest blew up")


@task
def hog(app: App, mb: int = 200) -> str:
    """Allocates `mb` MiB, reporting a MemoryError instead of dying."""
    try:
        block = bytearray(mb * 1024 * 1024)
        return f"allocated {len(block)}"
    except MemoryError:
        return "MemoryError"


@task
def tour(app: App) -> dict:
    """Walks the task registry, events and config from Python."""
    app.add_task("sleeper", {"ms": 60000}, name="py-napper")
    seen = app.get_task("py-napper")
    try:
        app.get_task("nobody")
        missing = "found?"
    except Exception as error:
        missing = type(error).__name__
    try:
        app.add_task("typed", {"num": "x", "label": "l"})
        bad = "accepted?"
    except Exception as error:
        bad = type(error).__name__
    cancelled = app.cancel_task("py-napper")
    woken = app.dispatch("py.nobody-listens", "x")
    listed = [t.name for t in app.tasks()]
    purged = app.purge_tasks()
    return {
        "seen": seen.state,
        "missing": missing,
        "bad_args": bad,
        "cancelled": cancelled.state,
        "woken": woken,
        "listed": "py-napper" in listed,
        "purged": purged >= 1,
        "greeting": app.config("greeting"),
    }


@task
def resumable(app: App, short_ms: int = 100, long_ms: int = 8000) -> dict:
    """For the resume tests (`durable = "resume"`): draws a random number
    and reads the clock (logging both), counts a run in bucket `resume`,
    then sleeps short_ms twice and long_ms once, logging `slept I` after
    each; returns what it drew and read, the count and its attempt."""
    import random
    import time

    drawn = random.getrandbits(48)
    now = time.time_ns()
    app.info(f"drew {drawn} at {now}")
    runs = app.kv("resume").increment("runs", 1)
    for i, pause in enumerate([short_ms, short_ms, long_ms]):
        app.sleep(pause)
        app.info(f"slept {i + 1}")
    return {"drawn": drawn, "at": now, "runs": runs, "attempt": app.attempt()}
