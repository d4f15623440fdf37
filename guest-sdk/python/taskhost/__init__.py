"""taskhost's guest SDK for Python: task factories as decorated functions.

    from taskhost import task, App

    @task
    def slow_work(app: App, ms: int = 100) -> None:
        \"\"\"Sleeps, then says so.\"\"\"
        app.sleep(ms)
        app.info("slow work done")

`taskhost build` turns a directory with a `pyproject.toml` holding a
`[tool.taskhost]` table into a component (with componentize-py). Every
task runs in its own instance; `app` speaks for that task alone.

A cancelled task sees `Cancelled`, a `BaseException` (like asyncio's
`CancelledError`): `except Exception:` does not swallow it and `finally`
blocks run. Other host errors are `TaskhostError` subclasses. An uncaught
exception fails the task with its traceback as the error.
"""

import dataclasses
import inspect
import json
import traceback
import typing
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import app as _app
from wit_world.imports import atomics as _atomics
from wit_world.imports import connections as _connections
from wit_world.imports import outgoing_handler as _outgoing
from wit_world.imports import wasi_config_store as _variables
from wit_world.imports import wasi_keyvalue_store as _store
from wit_world.imports import streams as _streams
from wit_world.imports import taskhost_plugin_types as _types
from wit_world.imports import wasi_http_types as _http

__all__ = [
    "App",
    "Bucket",
    "Cancelled",
    "DuplicateName",
    "Factories",
    "Failed",
    "HttpError",
    "InvalidArgs",
    "LimitExceeded",
    "NotFound",
    "Permanent",
    "Response",
    "Restart",
    "Retry",
    "TaskInfo",
    "TaskhostError",
    "UnknownFactory",
    "UnknownPlugin",
    "task",
]


class Cancelled(BaseException):
    """The task is being cancelled: let it propagate (clean up in `finally`).

    A `BaseException`, so `except Exception:` does not swallow it."""


class TaskhostError(Exception):
    """An error the host returned; `kind` names it as the WIT does."""

    kind = "failed"

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class UnknownFactory(TaskhostError):
    kind = "unknown-factory"


class InvalidArgs(TaskhostError):
    kind = "invalid-args"


class Failed(TaskhostError):
    kind = "failed"


class NotFound(TaskhostError):
    kind = "not-found"


class DuplicateName(TaskhostError):
    kind = "duplicate-name"


class UnknownPlugin(TaskhostError):
    kind = "unknown-plugin"


class LimitExceeded(TaskhostError):
    kind = "limit"


class HttpError(TaskhostError):
    """An outbound request failed: refused by app.toml's allow-list
    (`HttpRequestDenied`), unreachable, timed out, too large..."""

    kind = "failed"


class Permanent(Exception):
    """Raise it to fail the task for good: its retry policy does not try
    again."""


_FROM_WIT = {
    _types.Error_UnknownFactory: UnknownFactory,
    _types.Error_InvalidArgs: InvalidArgs,
    _types.Error_Failed: Failed,
    _types.Error_NotFound: NotFound,
    _types.Error_DuplicateName: DuplicateName,
    _types.Error_UnknownPlugin: UnknownPlugin,
    _types.Error_Limit: LimitExceeded,
}


def _raise_from(error: Any) -> typing.NoReturn:
    """Raises the Python exception for a WIT `error`."""
    if isinstance(error, _types.Error_Cancelled):
        raise Cancelled()
    cls = _FROM_WIT.get(type(error), Failed)
    raise cls(getattr(error, "value", str(error)))


def _call(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Err as err:
        _raise_from(err.value)


@dataclasses.dataclass
class TaskInfo:
    """A snapshot of one task of the caller's worker."""

    id: int
    name: Optional[str]
    plugin: str
    plugin_version: str
    factory: str
    worker: Optional[int]
    state: str
    created_at_ms: int
    started_at_ms: Optional[int]
    ended_at_ms: Optional[int]
    result: Optional[str]
    error: Optional[str]
    cancel_stage: Optional[str]

    @property
    def ended(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def value(self) -> Any:
        """The result of a `done` task, decoded from its JSON text; raises
        `Failed` naming the task's state (and why it failed) otherwise."""
        if self.state == "done" and self.result is not None:
            return json.loads(self.result)
        why = f": {self.error}" if self.error else ""
        raise Failed(f"task {self.id} ({self.factory}) is {self.state}{why}")

    @classmethod
    def _from_wit(cls, info: Any) -> "TaskInfo":
        return cls(
            id=info.id,
            name=info.name,
            plugin=info.plugin,
            plugin_version=info.plugin_version,
            factory=info.factory,
            worker=info.worker,
            state=info.state.name.lower(),
            created_at_ms=info.created_at_ms,
            started_at_ms=info.started_at_ms,
            ended_at_ms=info.ended_at_ms,
            result=info.result,
            error=info.error,
            cancel_stage=info.cancel_stage.name.lower() if info.cancel_stage else None,
        )


def _task_ref(task: Union[int, str]) -> Any:
    """A task to join, as the WIT names it: an id, or a name."""
    if isinstance(task, bool) or not isinstance(task, (int, str)):
        raise InvalidArgs(f"join: a task is its id (int) or its name (str), not {task!r}")
    if isinstance(task, int):
        return _app.TaskRef_Id(task)
    return _app.TaskRef_Name(task)


@dataclasses.dataclass
class Retry:
    """How a task is tried again after a failed attempt."""

    attempts: int
    initial_ms: int = 200
    max_ms: int = 60_000
    exponential: bool = True
    jitter: bool = True


@dataclasses.dataclass
class Restart:
    """How a supervised task is started again each time a run ends
    (docs/tasks.md, "Supervised tasks"): `when` is "on-failure" or
    "always"; bounds left None take the host's defaults (the wait doubles
    from 1 s to 1 min; at most 5 restarts within a minute)."""

    when: str = "on-failure"
    intensity: Optional[int] = None
    period_ms: Optional[int] = None
    initial_ms: Optional[int] = None
    max_ms: Optional[int] = None


def _restart_policy(restart: Restart) -> Any:
    whens = {
        "always": _app.RestartWhen.ALWAYS,
        "on-failure": _app.RestartWhen.ON_FAILURE,
    }
    if restart.when not in whens:
        raise InvalidArgs(
            f"restart.when must be \"always\" or \"on-failure\", got {restart.when!r}"
        )

    def as_int(value: Optional[int]) -> Optional[int]:
        return None if value is None else int(value)

    return _app.RestartPolicy(
        when=whens[restart.when],
        intensity=as_int(restart.intensity),
        period_ms=as_int(restart.period_ms),
        initial_ms=as_int(restart.initial_ms),
        max_ms=as_int(restart.max_ms),
    )


class Bucket:
    """A key-value bucket (`app.kv(name)`): the plugin's own, or a shared
    one app.toml grants. Values are JSON."""

    def __init__(self, bucket: Any):
        self._bucket = bucket

    def get(self, key: str, default: Any = None) -> Any:
        raw = _kv(self._bucket.get, key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        _kv(self._bucket.set, key, json.dumps(value).encode())

    def delete(self, key: str) -> None:
        _kv(self._bucket.delete, key)

    def exists(self, key: str) -> bool:
        return _kv(self._bucket.exists, key)

    def keys(self) -> List[str]:
        keys: List[str] = []
        cursor = None
        while True:
            page = _kv(self._bucket.list_keys, cursor)
            keys.extend(page.keys)
            cursor = page.cursor
            if cursor is None:
                return keys

    def increment(self, key: str, delta: int = 1) -> int:
        return _kv(_atomics.increment, self._bucket, key, delta)


def _kv(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Err as err:
        message = getattr(err.value, "value", None) or type(err.value).__name__
        if message.startswith("limit: "):
            raise LimitExceeded(message[len("limit: "):]) from None
        if "cancelled" in message:
            raise Cancelled() from None
        raise Failed(message) from None


def _variable_call(what: str, function: Callable[..., Any], *args: Any) -> Any:
    """Calls a wasi:config/store function, raising Failed naming `what`."""
    try:
        return function(*args)
    except Err as err:
        raise Failed(f"cannot read {what}: {err.value.value}") from None


@dataclasses.dataclass
class Response:
    """What `app.fetch` got back."""

    status: int
    #: Header names (lower case) and values; a repeated header's values
    #: joined with ", ".
    headers: Dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


_METHODS = {
    "GET": _http.Method_Get,
    "HEAD": _http.Method_Head,
    "POST": _http.Method_Post,
    "PUT": _http.Method_Put,
    "DELETE": _http.Method_Delete,
    "OPTIONS": _http.Method_Options,
    "PATCH": _http.Method_Patch,
}


def _http_failed(method: str, url: str, what: Any) -> typing.NoReturn:
    """Raises `Cancelled` if the request failed because the task is being
    cancelled (the host fails its requests at once then), else
    `HttpError` naming the request and the error."""
    try:
        _app.sleep(0)
    except Err as err:
        if isinstance(err.value, _types.Error_Cancelled):
            raise Cancelled() from None
    name = type(what).__name__.replace("ErrorCode_", "")
    detail = getattr(what, "value", None)
    message = f"{method} {url} failed: {name}" + (f" ({detail})" if detail is not None else "")
    raise HttpError(message) from None


def _fetch(url: str, method: str, headers: Optional[Dict[str, str]], body: Any) -> Response:
    method = method.upper()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"fetch: {url!r} is not an http:// or https:// URL")
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    elif body is None:
        data = b""
    else:
        data = json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    fields = _http.Fields.from_list([(k.lower(), str(v).encode()) for k, v in (headers or {}).items()])
    request = _http.OutgoingRequest(fields)
    request.set_method(_METHODS[method]() if method in _METHODS else _http.Method_Other(method))
    request.set_scheme(_http.Scheme_Http() if parts.scheme == "http" else _http.Scheme_Https())
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    outgoing = request.body()
    try:
        future = _outgoing.handle(request, None)
    except Err as err:
        _http_failed(method, url, err.value)
    try:
        with outgoing.write() as stream:
            for at in range(0, len(data), 4096):
                stream.blocking_write_and_flush(data[at : at + 4096])
        _http.OutgoingBody.finish(outgoing, None)
    except Err as err:
        _http_failed(method, url, err.value)
    with future:
        while True:
            got = future.get()
            if got is not None:
                break
            with future.subscribe() as ready:
                ready.block()
    if isinstance(got, Err) or isinstance(got.value, Err):
        _http_failed(method, url, got.value if isinstance(got, Err) else got.value.value)
    with got.value.value as response:
        status = response.status()
        with response.headers() as fields:
            found: Dict[str, List[str]] = {}
            for name, value in fields.entries():
                found.setdefault(name.lower(), []).append(value.decode("latin-1"))
        chunks = []
        incoming = response.consume()
        try:
            with incoming.stream() as stream:
                while True:
                    try:
                        chunks.append(stream.blocking_read(65536))
                    except Err as err:
                        if isinstance(err.value, _streams.StreamError_Closed):
                            break
                        _http_failed(method, url, err.value)
        finally:
            _http.IncomingBody.finish(incoming).__exit__(None, None, None)
    return Response(
        status=status,
        headers={name: ", ".join(values) for name, values in found.items()},
        body=b"".join(chunks),
    )


class Connection:
    """A websocket connection of the host's listener: a `[[routes]]
    websocket` route starts a task per connection and passes its id in
    `request["connection"]`. Any task of the plugin given the id may use
    it (the seed's receiver does). The client closing cancels the
    connection's task (`Cancelled`); the task returning closes it."""

    def __init__(self, id: int):
        self.id = id

    def recv(self) -> Optional[Union[str, bytes]]:
        """The client's next message (text as `str`, binary as `bytes`);
        None once the connection is over."""
        message = _call(_connections.recv, self.id)
        if message is None:
            return None
        if isinstance(message, _connections.Message_Text):
            return message.value
        return bytes(message.value)

    def send(self, message: Union[str, bytes]) -> None:
        """Queues a message for the client; waits while its buffer is full,
        fails once the client was dropped as too slow or closed."""
        if isinstance(message, str):
            wit = _connections.Message_Text(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            wit = _connections.Message_Binary(bytes(message))
        else:
            raise TypeError(f"send takes str or bytes, not {type(message).__name__}")
        _call(_connections.send, self.id, wit)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Closes with `code` (1000, or 3000-4999) after what was queued."""
        _call(_connections.close, self.id, code, reason)

    def __iter__(self) -> Iterator[Union[str, bytes]]:
        """The client's messages until the connection is over."""
        while True:
            message = self.recv()
            if message is None:
                return
            yield message


class App:
    """The handle to the app a task belongs to (Sanic's `app`)."""

    def name(self) -> str:
        """The app's name (`name` in app.toml)."""
        return _app.name()

    def worker(self) -> Optional[int]:
        """This task's worker index; None for a `scope = "main"` task."""
        return _app.worker()

    def id(self) -> int:
        """This task's id: unique in the host."""
        return _app.task_id()

    def attempt(self) -> int:
        """1, or more when a retry or a re-run after a crash runs it again."""
        return _app.attempt()

    def idempotency_key(self) -> Optional[str]:
        """A durable task's key, for effects that must not happen twice."""
        return _app.idempotency_key()

    def traceparent(self) -> Optional[str]:
        """The task's W3C `traceparent` when the host traces (`[telemetry]`):
        its own span, to name as the parent of spans made here. None when
        tracing is off. It is the `TRACEPARENT` environment variable."""
        import os

        return os.environ.get("TRACEPARENT")

    def stop_retrying(self) -> None:
        """Makes this attempt's failure final."""
        _app.stop_retrying()

    def config(self, key: str, default: Any = None) -> Any:
        """The value of `key` in app.toml's `[config]`, decoded."""
        raw = _app.config(key)
        return default if raw is None else json.loads(raw)

    def variable(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The plugin's variable `key` (`[plugins.NAME.variables]`, through
        wasi:config/store): a string, or `default` when it is not set."""
        value = _variable_call(f"variable `{key}`", _variables.get, key)
        return default if value is None else value

    def variables(self) -> Dict[str, str]:
        """All of the plugin's variables, by name."""
        return dict(_variable_call("the plugin's variables", _variables.get_all))

    def log(self, level: str, message: str) -> None:
        levels = {
            "trace": _types.Level.TRACE,
            "debug": _types.Level.DEBUG,
            "info": _types.Level.INFO,
            "warn": _types.Level.WARN,
            "error": _types.Level.ERROR,
        }
        _app.log(levels[level], str(message))

    def debug(self, message: str) -> None:
        self.log("debug", message)

    def info(self, message: str) -> None:
        self.log("info", message)

    def warn(self, message: str) -> None:
        self.log("warn", message)

    def error(self, message: str) -> None:
        self.log("error", message)

    def sleep(self, ms: int) -> None:
        """Sleeps `ms` milliseconds; raises `Cancelled` when cancelled."""
        _call(_app.sleep, int(ms))

    def add_task(
        self,
        factory: str,
        args: Any = None,
        *,
        name: Optional[str] = None,
        plugin: Optional[str] = None,
        retry: Optional[Retry] = None,
        durable: bool = False,
        idempotency_key: Optional[str] = None,
        queue: Optional[str] = None,
        key: Optional[str] = None,
        priority: Optional[int] = None,
        delay_ms: Optional[int] = None,
        run_at_ms: Optional[int] = None,
        child: bool = False,
        restart: Optional[Restart] = None,
    ) -> int:
        """Starts a task on this worker; returns its id once its factory
        accepted `args`. With `queue` (or `key`, `priority`, `delay_ms`,
        `run_at_ms`, which mean the `default` queue without it) it waits in
        that queue until the queue lets it start, and the id comes at once.
        With `child`, it is cancelled when this task is cancelled or this
        attempt ends (not with `durable`). With `restart` (a `Restart`) it
        is supervised: started again each time a run ends."""
        text = json.dumps(args)
        placed = any(
            v is not None for v in (queue, key, priority, delay_ms, run_at_ms)
        )
        if (
            retry is None
            and not durable
            and idempotency_key is None
            and not placed
            and not child
            and restart is None
        ):
            return _call(_app.add_task, plugin, factory, text, name)
        placement = None
        if placed:
            start = None
            if delay_ms is not None:
                start = _app.StartAt_DelayMs(int(delay_ms))
            elif run_at_ms is not None:
                start = _app.StartAt_RunAtMs(int(run_at_ms))
            placement = _app.Placement(
                queue=queue if queue is not None else "default",
                key=key,
                priority=None if priority is None else int(priority),
                start=start,
            )
        options = _app.TaskOptions(
            name=name,
            retry=None
            if retry is None
            else _app.RetryPolicy(
                attempts=retry.attempts,
                initial_ms=retry.initial_ms,
                max_ms=retry.max_ms,
                exponential=retry.exponential,
                jitter=retry.jitter,
            ),
            durable=durable,
            idempotency_key=idempotency_key,
            placement=placement,
            child=child,
            restart=None if restart is None else _restart_policy(restart),
        )
        return _call(_app.start_task, plugin, factory, text, options)

    def join(self, task: Union[int, str], timeout_ms: Optional[int] = None) -> Optional[TaskInfo]:
        """Waits until `task` (an id, or a name on this worker) has ended
        and returns its final info (`info.value()` decodes a done task's
        result); None when `timeout_ms` passes first (the task goes on).
        Raises `NotFound`, `InvalidArgs` for this task itself or its parent,
        `Cancelled` as soon as this task is cancelled."""
        ended = _call(_app.join, _task_ref(task), timeout_ms)
        return None if ended is None else TaskInfo._from_wit(ended)

    def join_all(
        self, tasks: List[Union[int, str]], timeout_ms: Optional[int] = None
    ) -> Optional[List[TaskInfo]]:
        """`join` for every task of `tasks` (fan-in): their final infos in
        the same order; None when `timeout_ms` passes first."""
        ended = _call(_app.join_all, [_task_ref(t) for t in tasks], timeout_ms)
        return None if ended is None else [TaskInfo._from_wit(i) for i in ended]

    def join_any(
        self, tasks: List[Union[int, str]], timeout_ms: Optional[int] = None
    ) -> Optional[typing.Tuple[int, TaskInfo]]:
        """`join` for the first of `tasks` to end: its index in `tasks` and
        its final info; None when `timeout_ms` passes first."""
        ended = _call(_app.join_any, [_task_ref(t) for t in tasks], timeout_ms)
        return None if ended is None else (ended[0], TaskInfo._from_wit(ended[1]))

    def get_task(self, name: str) -> TaskInfo:
        return TaskInfo._from_wit(_call(_app.get_task, name))

    def cancel_task(self, name: str) -> TaskInfo:
        """Cancels the task `name` and returns its final info once ended."""
        return TaskInfo._from_wit(_call(_app.cancel_task, name))

    def tasks(self) -> List[TaskInfo]:
        return [TaskInfo._from_wit(info) for info in _app.tasks()]

    def purge_tasks(self) -> int:
        return _app.purge_tasks()

    def dispatch(self, event: str, payload: str = "") -> int:
        return _call(_app.dispatch, event, payload)

    def wait_event(self, event: str, timeout_ms: Optional[int] = None) -> Optional[str]:
        return _call(_app.wait_event, event, timeout_ms)

    def add_schedule(self, spec: Optional[Dict[str, Any]] = None, **fields: Any) -> None:
        """Adds a schedule with app.toml's `[[schedules]]` fields."""
        _call(_app.add_schedule, json.dumps({**(spec or {}), **fields}))

    def remove_schedule(self, name: str) -> bool:
        return _call(_app.remove_schedule, name)

    def fetch(
        self,
        url: str,
        method: str = "GET",
        *,
        headers: Optional[Dict[str, str]] = None,
        body: Any = None,
    ) -> Response:
        """Sends one HTTP request through the host (app.toml's
        `[plugins.NAME.grants] http` must allow its origin) and returns the
        whole response. `body` may be bytes, text, or anything JSON (sent
        as application/json). Raises `HttpError` when the request fails,
        `Cancelled` when the task is cancelled meanwhile."""
        return _fetch(url, method, headers, body)

    def connection(self, request: Union[Dict[str, Any], int]) -> Connection:
        """The websocket connection of a route's `request` (or by its id)."""
        if isinstance(request, dict):
            if request.get("connection") is None:
                raise Failed("this request has no websocket connection")
            return Connection(request["connection"])
        return Connection(request)

    def kv(self, bucket: str) -> Bucket:
        """Opens a key-value bucket."""
        return Bucket(_kv(_store.open, bucket))


class _Task:
    """A registered factory: its function and how its arguments decode."""

    def __init__(self, function: Callable[..., Any], name: str, description: str):
        self.function = function
        self.name = name
        self.description = description
        signature = inspect.signature(function)
        params = list(signature.parameters.values())
        if not params:
            raise TypeError(f"task {name}: its first parameter must be the app")
        try:
            hints = typing.get_type_hints(function)
        except Exception:
            hints = {}
        self.params = [(p, hints.get(p.name, Any)) for p in params[1:]]

    def decode(self, text: str) -> Dict[str, Any]:
        """The keyword arguments for `text` (JSON), or `InvalidArgs`."""
        try:
            args = json.loads(text) if text else None
        except ValueError as error:
            raise InvalidArgs(f"factory {self.name}: arguments are not JSON: {error}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidArgs(
                f"factory {self.name}: arguments must be a JSON object, got {type(args).__name__}"
            )
        known = {p.name for p, _ in self.params}
        unknown = sorted(set(args) - known)
        if unknown:
            raise InvalidArgs(
                f"factory {self.name}: unknown argument `{unknown[0]}` "
                f"(it takes: {', '.join(sorted(known)) or 'none'})"
            )
        kwargs = {}
        for param, hint in self.params:
            if param.name in args:
                value = args[param.name]
                if not _fits(value, hint):
                    raise InvalidArgs(
                        f"factory {self.name}: argument `{param.name}` must be "
                        f"{_describe(hint)}, got {json.dumps(value)}"
                    )
                kwargs[param.name] = value
            elif param.default is inspect.Parameter.empty:
                raise InvalidArgs(f"factory {self.name}: missing argument `{param.name}`")
        return kwargs


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, List) or hint is list:
        items = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, items[0]) for v in value) if items else isinstance(value, list)
    if origin in (dict, Dict) or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


_TASKS: Dict[str, _Task] = {}


def task(function: Optional[Callable[..., Any]] = None, *, name: Optional[str] = None, description: Optional[str] = None) -> Any:
    """Registers a function as a task factory, named after it (or `name`).
    Its docstring's first line is its description; its parameters after
    the app are its arguments, decoded from JSON by name and checked
    against their type hints."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        factory = name or function.__name__
        doc = description or (inspect.getdoc(function) or "").strip().splitlines()
        text = doc if isinstance(doc, str) else (doc[0] if doc else "")
        _TASKS[factory] = _Task(function, factory, text)
        return function

    if function is not None:
        return register(function)
    return register


def _lookup(factory: str) -> _Task:
    found = _TASKS.get(factory)
    if found is None:
        raise Err(
            _types.Error_UnknownFactory(
                f"{factory} (this plugin has: {', '.join(sorted(_TASKS)) or 'none'})"
            )
        )
    return found


def _to_wit(error: TaskhostError) -> Any:
    for wit, cls in _FROM_WIT.items():
        if type(error) is cls:
            return wit(error.message)
    return _types.Error_Failed(error.message)


class Factories(exports.Factories):
    """The plugin's export: every `@task` of the module `taskhost build`
    names."""

    def list_factories(self) -> List[Any]:
        return [_types.FactoryInfo(name=t.name, description=t.description) for t in _TASKS.values()]

    def check(self, factory: str, args: str) -> None:
        try:
            _lookup(factory).decode(args)
        except InvalidArgs as error:
            raise Err(_types.Error_InvalidArgs(error.message))

    def run(self, factory: str, args: str) -> str:
        found = _lookup(factory)
        try:
            kwargs = found.decode(args)
        except InvalidArgs as error:
            raise Err(_types.Error_InvalidArgs(error.message))
        try:
            result = found.function(App(), **kwargs)
        except Cancelled:
            raise Err(_types.Error_Cancelled())
        except Permanent as error:
            _app.stop_retrying()
            raise Err(_types.Error_Failed(str(error) or type(error).__name__))
        except BaseException:
            raise Err(_types.Error_Failed(traceback.format_exc().rstrip()))
        try:
            return json.dumps(result)
        except (TypeError, ValueError) as error:
            raise Err(_types.Error_Failed(f"the result is not JSON: {error}"))
