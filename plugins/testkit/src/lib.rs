//! Factories the integration tests use to observe the host from inside a task.

use serde_json::{Value, json};
use taskhost_guest_sdk::{
    App, Error, Message, Request, Restart, Result, TaskInfo, TaskState, plugin,
};

/// Polls `name` until its state satisfies `done`: for probes that must
/// observe a state change from inside a task (there is no event for it).
fn wait_state(app: &App, name: &str, done: impl Fn(TaskState) -> bool) -> Result<TaskInfo> {
    loop {
        let info = app.get_task(name)?;
        if done(info.state) {
            return Ok(info);
        }
        app.sleep(1)?;
    }
}

/// "ok", or the kind of the error, for reports.
fn outcome<T>(result: Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(error) => format!("{:?}", error.kind()),
    }
}

fn names(tasks: &[TaskInfo]) -> Vec<String> {
    tasks
        .iter()
        .map(|t| t.name.clone().unwrap_or_else(|| t.id.to_string()))
        .collect()
}

/// `GET url` through wasi:http/outgoing-handler: the status and the body
/// as text, or what failed.
fn http_get_raw(url: &str) -> std::result::Result<(u16, String), String> {
    http_finish(http_start(url)?)
}

/// Sends a GET of `url` through wasi:http; the response comes later.
fn http_start(url: &str) -> std::result::Result<wasi::http::types::FutureIncomingResponse, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let (scheme, rest) = url.split_once("://").ok_or("no scheme in the url")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).map_err(|_| "method")?;
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    request.set_scheme(Some(&scheme)).map_err(|_| "scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|_| "authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| "path")?;
    outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))
}

/// Waits for a response and reads its body whole.
fn http_finish(
    pending: wasi::http::types::FutureIncomingResponse,
) -> std::result::Result<(u16, String), String> {
    use wasi::http::types;
    use wasi::io::streams::StreamError;
    let response = loop {
        match pending.get() {
            None => pending.subscribe().block(),
            Some(Err(())) => return Err("the response was taken twice".into()),
            Some(Ok(Err(error))) => return Err(format!("{error:?}")),
            Some(Ok(Ok(response))) => break response,
        }
    };
    let status = response.status();
    let body = response.consume().map_err(|_| "consume")?;
    let stream = body.stream().map_err(|_| "stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(format!(
                    "reading the body failed: {} {:?}",
                    error.to_debug_string(),
                    types::http_error_code(&error)
                ));
            }
        }
    }
    drop(stream);
    drop(body);
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

plugin! {
    /// Returns and logs what the injected app handle says about this task.
    fn identity(app: &App) -> Result<serde_json::Value> {
        let seen = serde_json::json!({ "name": app.name(), "worker": app.worker() });
        app.info(seen.to_string());
        Ok(seen)
    }

    /// Returns its typed arguments, so tests can see what reached the task.
    fn typed(app: &App, num: u32, label: String, flag: Option<bool>) -> Result<serde_json::Value> {
        let seen = serde_json::json!({ "num": num, "label": label, "flag": flag });
        app.info(seen.to_string());
        Ok(seen)
    }

    /// GETs `url` through wasi:http; returns `{status, body}`. A failed
    /// request fails the task with the reason, after one `app` call, so a
    /// task cancelled mid-request ends `cancelled`, as a real one would.
    fn http_get(app: &App, url: String) -> Result<Value> {
        match http_get_raw(&url) {
            Ok((status, body)) => Ok(json!({"status": status, "body": body})),
            Err(failure) => {
                app.warn(format!("GET {url} failed: {failure}"));
                app.sleep(0)?;
                Err(Error::msg(failure))
            }
        }
    }

    /// A webhook route's task for the trace tests: GETs `url` (the route's
    /// `args`), counts in bucket `traced`, then starts a child task (`nap`)
    /// and waits for it; returns the GET's status and the task's
    /// `traceparent`.
    fn traced_hook(app: &App, request: Request, url: String) -> Result<Value> {
        let _ = request;
        let (status, _) = http_get_raw(&url).map_err(Error::msg)?;
        app.kv("traced")?.increment("calls", 1)?;
        let child = app.task("nap").args(json!({"ms": 1})).child().start()?;
        app.join(child, None)?;
        Ok(json!({"status": status, "traceparent": app.traceparent()}))
    }

    /// Sends `count` GETs of `url` at once, then reads each answer:
    /// returns per request `"200"` or the error it got.
    fn http_parallel(_app: &App, url: String, count: u32) -> Result<Value> {
        let pending: Vec<_> = (0..count).map(|_| http_start(&url)).collect();
        let answers: Vec<String> = pending
            .into_iter()
            .map(|sent| match sent.and_then(http_finish) {
                Ok((status, _)) => status.to_string(),
                Err(error) => error,
            })
            .collect();
        Ok(json!(answers))
    }

    /// For the resume tests (`durable = "resume"`): draws a random number
    /// (logs `random R`), increments `runs` in bucket `resume`, then
    /// sleeps each of `pauses` (ms) in turn with `app.sleep`, logging
    /// `slept I` after each; returns the number, its attempt and the
    /// count.
    fn resumable(app: &App, pauses: Vec<u64>) -> Result<Value> {
        let random = wasi::random::random::get_random_u64();
        app.info(format!("random {random}"));
        // Counted once per task, however often it is resumed.
        let runs = app.kv("resume")?.increment("runs", 1)?;
        for (i, pause) in pauses.iter().enumerate() {
            app.sleep(*pause)?;
            app.info(format!("slept {}", i + 1));
        }
        Ok(json!({"random": random, "attempt": app.attempt(), "runs": runs}))
    }

    /// For the resume tests: begins a GET of each of `urls` at once,
    /// reads their answers in that order, then sleeps `ms`; returns each
    /// answer's body (or error).
    fn parallel_then_sleep(app: &App, urls: Vec<String>, ms: u64) -> Result<Value> {
        let pending: Vec<_> = urls.iter().map(|url| http_start(url)).collect();
        let bodies: Vec<String> = pending
            .into_iter()
            .map(|sent| match sent.and_then(http_finish) {
                Ok((_, body)) => body,
                Err(error) => error,
            })
            .collect();
        app.sleep(ms)?;
        Ok(json!(bodies))
    }

    /// For the resume tests: starts two `resumable` tasks (with `short`
    /// and `long` pauses), joins each in turn, and returns their results
    /// in start order.
    fn starts_children(app: &App, short: Vec<u64>, long: Vec<u64>) -> Result<Value> {
        let first = app.task("resumable").args(json!({"pauses": short})).start()?;
        let second = app.task("resumable").args(json!({"pauses": long})).start()?;
        let mut results = Vec::new();
        for id in [first, second] {
            let ended = app.join(id, None)?.expect("no timeout");
            let result = ended.result.clone().ok_or_else(|| Error::msg(format!("{ended:?}")))?;
            results.push(serde_json::from_str::<Value>(&result)?);
        }
        Ok(json!({"children": results, "attempt": app.attempt()}))
    }

    /// For the resume tests: waits for `event`, logs `got PAYLOAD`, reads
    /// `[config] greeting`, then sleeps `ms`; returns the payload and the
    /// greeting.
    fn event_then_sleep(app: &App, event: String, ms: u64) -> Result<Value> {
        let got = app.wait_event(&event, None)?.unwrap_or_default();
        app.info(format!("got {got}"));
        let greeting: Option<String> = app.config("greeting")?;
        app.sleep(ms)?;
        Ok(json!({"got": got, "greeting": greeting}))
    }

    /// A task that cannot resume: its first sleep depends on its attempt
    /// (`100 * attempt` ms), then it sleeps a minute. Resumed after a
    /// crash, its first call differs from the journal's.
    fn drifting(app: &App) -> Result<()> {
        app.sleep(100 * u64::from(app.attempt()))?;
        app.sleep(60_000)?;
        Ok(())
    }

    /// Returns the `[config]` value of `key` as the task's result.
    fn config_value(app: &App, key: String) -> Result<Option<serde_json::Value>> {
        let value: Option<serde_json::Value> = app.config(&key)?;
        app.info(format!("config {key} = {}", serde_json::to_string(&value)?));
        Ok(value)
    }

    /// Every `every_ms`, GETs `url` with `?attempt=A&i=I` (its attempt and
    /// the round), `times` times: a task whose every step is an effect
    /// outside the sandbox. Returns the rounds made.
    fn ticker(app: &App, url: String, every_ms: u64, times: u32) -> Result<u32> {
        for i in 0..times {
            app.sleep(every_ms)?;
            http_get_raw(&format!("{url}?attempt={}&i={i}", app.attempt()))
                .map_err(Error::msg)?;
        }
        Ok(times)
    }

    /// The plugin's variables through `wasi:config/store`: `key`'s value
    /// and all of them, in name order.
    fn variables(app: &App, key: String) -> Result<serde_json::Value> {
        let mut all = app.variables()?;
        all.sort();
        Ok(json!({ "value": app.variable(&key)?, "all": all }))
    }

    /// Reads the `[config]` value of `key` as a number: a string fails.
    fn config_number(app: &App, key: String) -> Result<Option<u64>> {
        app.config(&key)
    }

    /// Sleeps `ms`, then logs `woke` and returns `ms`.
    /// One key-value operation on `bucket`: `get`, `set` (`value`),
    /// `set_size` (`size` bytes of JSON text), `delete`, `exists`, `keys`,
    /// `increment` (`delta`), `cas` (`expected`, `value`), `update_add`
    /// (adds `delta` through a retried compare-and-swap), `set_many` and
    /// `delete_many` (`key`: keys separated by commas, in one batch). `times` repeats
    /// the op (default once). Returns the last answer; a refused call fails
    /// with the host's error.
    fn kv(
        app: &App,
        bucket: String,
        op: String,
        key: Option<String>,
        value: Option<Value>,
        size: Option<usize>,
        delta: Option<i64>,
        expected: Option<Value>,
        times: Option<u32>,
    ) -> Result<Value> {
        let b = app.kv(&bucket)?;
        let key = key.unwrap_or_default();
        let mut last = Value::Null;
        for _ in 0..times.unwrap_or(1) {
            last = kv_op(&b, &op, &key, &value, size, delta, &expected)?;
        }
        Ok(last)
    }


    /// Fails its first `fail_times` attempts (permanently, if `permanent`),
    /// then returns the attempt number; `trap` makes a failure a panic.
    fn flaky(
        app: &App,
        fail_times: u32,
        permanent: Option<bool>,
        trap: Option<bool>,
        hang: Option<bool>,
    ) -> Result<u32> {
        let attempt = app.attempt();
        if attempt > fail_times {
            return Ok(attempt);
        }
        if hang.unwrap_or(false) {
            // Until a time limit or a cancel stops this attempt.
            app.sleep(u64::MAX)?;
        }
        if trap.unwrap_or(false) {
            panic!("attempt {attempt} panicked");
        }
        if permanent.unwrap_or(false) {
            return Err(Error::permanent(format!("attempt {attempt} failed for good")));
        }
        Err(Error::msg(format!("attempt {attempt} failed")))
    }

    /// Opens bucket `b` `count` times and never drops a handle.
    fn kv_hoard(app: &App, count: u32) -> Result<u32> {
        for _ in 0..count {
            std::mem::forget(app.kv("b")?);
        }
        Ok(count)
    }

    /// Sleeps `ms`, then says which attempt it was and its durable key.
    fn keyed_nap(app: &App, ms: u64) -> Result<Value> {
        app.sleep(ms)?;
        Ok(json!({"ms": ms, "attempt": app.attempt(), "key": app.idempotency_key()}))
    }

    /// Starts a durable `keyed_nap` twice with the same idempotency key
    /// and reports both answers (the same id: one task).
    fn start_durable_twice(app: &App, key: String, ms: u64) -> Result<Value> {
        let start = || {
            app.task("keyed_nap")
                .name("guest-durable")
                .args(json!({"ms": ms}))
                .durable()
                .idempotency_key(&key)
                .retry(taskhost_guest_sdk::Retry::attempts(2))
                .start()
        };
        let first = start()?;
        let second = start()?;
        let plain = app.task("nap").args(json!({"ms": 1})).idempotency_key("k").start();
        Ok(json!({"first": first, "second": second, "key_without_durable": outcome(plain)}))
    }

    /// Adds the schedule `spec` (app.toml's fields, as JSON), or with
    /// `remove` removes the one so named; reports what the host said.
    fn steer_schedule(app: &App, spec: Value, remove: Option<bool>) -> Result<Value> {
        if remove.unwrap_or(false) {
            let name = spec["name"].as_str().unwrap_or_default();
            return Ok(json!({"removed": outcome(app.remove_schedule(name))}));
        }
        Ok(match app.add_schedule(&spec) {
            Ok(()) => json!({"added": "ok"}),
            Err(error) => json!({"added": format!("{:?}", error.kind()), "error": error.to_string()}),
        })
    }

    /// Sleeps `ms`, and fails (rather than returning `cancelled`) when
    /// stopped: a guest that unwraps its way out of a cancel.
    fn stubborn_nap(app: &App, ms: u64) -> Result<Value> {
        match app.sleep(ms) {
            Ok(()) => Ok(json!({"ms": ms, "attempt": app.attempt()})),
            Err(_) => Err(Error::msg(format!("attempt {} was interrupted", app.attempt()))),
        }
    }

    /// Starts `nap` (`ms`) named `name` on `host` of the cluster (its name
    /// cluster-wide with `cluster_name`) and reports where it runs, or the
    /// error's kind and message; with `join`, joins what it placed and
    /// reports their final infos too.
    fn spread(
        app: &App,
        host: String,
        name: String,
        ms: u64,
        cluster_name: Option<bool>,
        join: Option<bool>,
    ) -> Result<Value> {
        let task = app.task("nap").name(&name).args(json!({"ms": ms}));
        let placed = if cluster_name.unwrap_or(false) {
            task.start_on_with_cluster_name(&host)
        } else {
            task.start_on(&host)
        };
        let placed = match placed {
            Ok(placed) => placed,
            Err(error) => {
                return Ok(
                    json!({"error": format!("{:?}", error.kind()), "message": error.to_string()}),
                );
            }
        };
        if !join.unwrap_or(false) {
            return Ok(json!({"placed": placed}));
        }
        let joined = app.join_all(&placed, None)?.expect("no timeout");
        Ok(json!({"placed": placed, "joined": joined}))
    }

    /// Joins, and reports what it got: `{"ended": task}`, `{"timed_out":
    /// true}` or `{"error": kind, "message"}`. `mode`: `name` (joins
    /// `target` within `timeout_ms`), `any` (join-any of `target`'s
    /// comma-separated names), `id` (joins the task whose id `target`
    /// is), `placed` (joins task `id` of host `host`, `target` being
    /// `host:id`), `self`, `parent` (starts a child that joins this task,
    /// and reports what the child got).
    fn join_probe(
        app: &App,
        mode: String,
        target: Option<String>,
        timeout_ms: Option<u64>,
    ) -> Result<Value> {
        fn report(joined: Result<Option<TaskInfo>>) -> Value {
            match joined {
                Ok(Some(info)) => json!({"ended": info}),
                Ok(None) => json!({"timed_out": true}),
                Err(error) => {
                    json!({"error": format!("{:?}", error.kind()), "message": error.to_string()})
                }
            }
        }
        let target = target.unwrap_or_default();
        Ok(match mode.as_str() {
            "name" => report(app.join(target.as_str(), timeout_ms)),
            "id" => report(app.join(target.parse::<u64>().unwrap_or(u64::MAX), timeout_ms)),
            "self" => report(app.join(app.id(), timeout_ms)),
            "placed" => {
                let (host, id) = target.split_once(':').unwrap_or(("", ""));
                let placed = taskhost_guest_sdk::Placed {
                    host: host.to_string(),
                    id: id.parse().unwrap_or(u64::MAX),
                };
                report(app.join(placed, timeout_ms))
            }
            "any" => match app.join_any(target.split(','), timeout_ms) {
                Ok(Some((index, info))) => json!({"index": index, "ended": info}),
                other => report(other.map(|ended| ended.map(|(_, info)| info))),
            },
            "parent" => {
                let child = app
                    .task("join_probe")
                    .args(json!({"mode": "id", "target": app.id().to_string()}))
                    .start()?;
                let ended = app.join(child, None)?.expect("no timeout");
                ended.result_as::<Value>()?
            }
            other => return Err(Error::permanent(format!("no join_probe mode {other:?}"))),
        })
    }

    /// Cancels itself (it is named `name`) and returns what that said.
    fn cancel_self(app: &App, name: String) -> Result<Value> {
        app.cancel_task(&name)?;
        Ok(json!("still here"))
    }

    fn nap(app: &App, ms: u64) -> Result<u64> {
        app.sleep(ms)?;
        app.info("woke");
        Ok(ms)
    }

    /// Walks the task registry API on its own worker and reports what it saw.
    fn tour(app: &App) -> Result<Value> {
        let added = app.task("nap").name("napper").args(json!({"ms": 30})).start()?;
        let first = wait_state(app, "napper", |s| s != TaskState::Pending)?;
        let duplicate = outcome(app.task("nap").name("napper").args(json!({"ms": 1})).start());
        let get_unknown = outcome(app.get_task("nobody"));
        let cancel_unknown = outcome(app.cancel_task("nobody"));
        let bad_args = outcome(app.task("nap").args(json!({"ms": "soon"})).start());
        let unknown_factory = outcome(app.add_task("no_such_factory", ()));
        let unknown_plugin = outcome(app.task("nap").plugin("no_such_plugin").start());
        let finished = wait_state(app, "napper", TaskState::is_ended)?;

        app.task("fail").name("failer").start()?;
        app.task("nap").name("holder").args(json!({"ms": 600000})).start()?;
        wait_state(app, "failer", TaskState::is_ended)?;
        // Unlike Sanic, cancelling a task that failed does not re-raise its
        // error: it returns the task's final info.
        let cancel_failed = app.cancel_task("failer")?;
        let before_purge = names(&app.tasks());
        let purged = app.purge_tasks();
        let after_purge = names(&app.tasks());
        let holder = app.cancel_task("holder")?;
        let holder_again = app.cancel_task("holder")?;
        app.purge_tasks();
        let reused = outcome(app.task("nap").name("napper").args(json!({"ms": 1})).start());
        // Last: cancelling oneself returns `cancelled` instead of waiting
        // forever, and later calls that start work are refused.
        let my_name = app
            .tasks()
            .into_iter()
            .find(|t| t.id == app.id())
            .and_then(|t| t.name)
            .unwrap_or_default();
        let self_cancel = outcome(app.cancel_task(&my_name));
        let add_after_cancel = outcome(app.add_task("nap", json!({"ms": 1})));
        Ok(json!({
            "worker": app.worker(),
            "added": added,
            "first": first,
            "duplicate": duplicate,
            "get_unknown": get_unknown,
            "cancel_unknown": cancel_unknown,
            "bad_args": bad_args,
            "unknown_factory": unknown_factory,
            "unknown_plugin": unknown_plugin,
            "finished": finished,
            "cancel_failed": cancel_failed,
            "before_purge": before_purge,
            "purged": purged,
            "after_purge": after_purge,
            "holder": holder,
            "holder_again": holder_again,
            "reused": reused,
            "self_cancel": self_cancel,
            "add_after_cancel": add_after_cancel,
        }))
    }

    /// A websocket route's task that behaves as `request.query.mode` says:
    /// `return` (sends "hello", returns), `trap` (sends "hello", panics),
    /// `echo` (echoes each message; logs `echo cleanup` when cancelled),
    /// `close_and_return` (sends "last words", closes with 4001, returns),
    /// `flood` (sends `count` messages of `bytes` bytes, then returns what
    /// the last send said), `close` (closes with 4000 "done here", then
    /// sleeps until cancelled), `idle` (sleeps until cancelled), `oversize`
    /// (sends one message of `bytes` bytes; returns the error).
    fn ws_probe(app: &App, request: Request) -> Result<Value> {
        let connection = request.connection()?;
        let mode = request.query.get("mode").map(String::as_str).unwrap_or("echo");
        let number = |key: &str, default: usize| {
            request.query.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        match mode {
            "return" => {
                connection.send("hello")?;
                Ok(json!("returned"))
            }
            "trap" => {
                connection.send("hello")?;
                panic!("the probe traps on purpose");
            }
            "echo" => {
                let echoed = (|| -> Result<u64> {
                    let mut echoed = 0;
                    while let Some(message) = connection.recv()? {
                        connection.send(message)?;
                        echoed += 1;
                    }
                    Ok(echoed)
                })();
                if echoed.as_ref().is_err_and(Error::is_cancelled) {
                    app.info("echo cleanup");
                }
                Ok(json!(echoed?))
            }
            "flood" => {
                let (count, bytes) = (number("count", 1000), number("bytes", 1024));
                let payload = "x".repeat(bytes);
                for sent in 0..count {
                    if let Err(error) = connection.send(payload.as_str()) {
                        app.warn(format!("send {sent} failed: {error}"));
                        return Err(error);
                    }
                }
                Ok(json!(count))
            }
            "close_and_return" => {
                connection.send("last words")?;
                connection.close(4001, "closed by the task")?;
                Ok(json!("returned"))
            }
            "close" => {
                connection.close(4000, "done here")?;
                app.sleep(3_600_000)?;
                Ok(Value::Null)
            }
            "idle" => {
                app.sleep(3_600_000)?;
                Ok(Value::Null)
            }
            "oversize" => {
                let error = connection.send(vec![0u8; number("bytes", 1 << 20)]).unwrap_err();
                connection.send(Message::Text(format!("{error}")))?;
                Ok(json!(error.to_string()))
            }
            other => Err(Error::msg(format!("no mode {other:?}"))),
        }
    }

    /// A webhook route's task: `mode` (the route's `args`) `fail` fails,
    /// `sleep` sleeps `ms` first; every mode returns the request it got.
    fn hook_probe(app: &App, request: Request, mode: Option<String>, ms: Option<u64>) -> Result<Request> {
        match mode.as_deref() {
            Some("fail") => Err(Error::msg("the hook probe fails on purpose")),
            Some("sleep") => {
                app.sleep(ms.unwrap_or(3_600_000))?;
                Ok(request)
            }
            _ => Ok(request),
        }
    }

    /// Runs the examples plugin's `feed` with `events` events, delivering
    /// them one by one, and reports what is left in the registry after it.
    fn feed_scenario(app: &App, events: u32) -> Result<Value> {
        app.task("feed").plugin("examples").name("feed").args(json!({"events": events, "event": "feed"})).start()?;
        let feed_id = app.get_task("feed")?.id;
        let mut delivered = 0;
        loop {
            if app.get_task("feed")?.state.is_ended() {
                break;
            }
            // A dispatch that wakes nobody came while the feed was not
            // waiting; only count those it heard.
            if app.dispatch("feed", "tick")? > 0 {
                delivered += 1;
            } else {
                app.sleep(1)?;
            }
        }
        Ok(json!({
            "feed": app.get_task("feed")?,
            "receiver": format!("receiver:{feed_id}"),
            "tasks": names(&app.tasks()),
            "delivered": delivered,
        }))
    }

    /// Waits for `event` (with an optional timeout) and returns the payload.
    fn waiter(app: &App, event: String, timeout_ms: Option<u64>) -> Result<Option<String>> {
        app.wait_event(&event, timeout_ms)
    }

    /// Sleeps `ms` and returns how late it woke (ms), then cancels the task
    /// named `then_cancel`: the probe for fairness next to a spinner.
    fn late_sleeper(app: &App, ms: u64, then_cancel: Option<String>) -> Result<Value> {
        let begun = std::time::Instant::now();
        app.sleep(ms)?;
        let late_ms = begun.elapsed().as_secs_f64() * 1e3 - ms as f64;
        let cancelled = match then_cancel {
            Some(name) => Some(app.cancel_task(&name)?),
            None => None,
        };
        Ok(json!({ "late_ms": late_ms, "cancelled": cancelled }))
    }

    /// Blocks in WASI (`std::thread::sleep`, a clock poll), where neither
    /// the app handle's cancellation nor epochs reach: only a forced cancel
    /// that drops the call ends it.
    fn wasi_sleeper(app: &App) -> Result<()> {
        app.info("sleeping in wasi");
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(())
    }

    /// Well-behaved CPU work: `rounds` steps of xorshift64 from a fixed seed,
    /// returning where it ends (the tests compute the same on the host).
    fn crunch(_app: &App, rounds: u64) -> Result<u64> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..rounds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        Ok(x)
    }

    /// Tries what WASI grants allow, from inside: reads the guest path
    /// `read`, writes to the guest path `write`, reads the variables `env`.
    /// Reports each answer (or the error) rather than failing.
    fn wasi_probe(
        _app: &App,
        read: Option<String>,
        write: Option<String>,
        env: Vec<String>,
    ) -> Result<Value> {
        let answer = |result: std::io::Result<Value>| match result {
            Ok(value) => json!({ "ok": value }),
            Err(error) => json!({ "error": error.to_string() }),
        };
        let read = read.map(|path| answer(std::fs::read_to_string(path).map(Value::from)));
        let write = write.map(|path| answer(std::fs::write(path, "written by a task").map(|_| Value::Null)));
        let env: serde_json::Map<String, Value> = env
            .into_iter()
            .map(|name| {
                let value = std::env::var(&name).ok();
                (name, json!(value))
            })
            .collect();
        Ok(json!({ "read": read, "write": write, "env": env }))
    }

    /// Starts `nap` as task `name` in `queue` with `key`, `priority` and
    /// `delay_ms` (WIT 0.3.0's placement), then returns the state it reads
    /// back, or the error the host gave.
    fn place(
        app: &App,
        name: String,
        queue: Option<String>,
        key: Option<String>,
        priority: Option<i32>,
        delay_ms: Option<u64>,
    ) -> Result<serde_json::Value> {
        let mut task = app.task("nap").name(&name).args(json!({"ms": 1}));
        if let Some(queue) = &queue {
            task = task.queue(queue);
        }
        if let Some(key) = &key {
            task = task.key(key);
        }
        if let Some(priority) = priority {
            task = task.priority(priority);
        }
        if let Some(ms) = delay_ms {
            task = task.delay_ms(ms);
        }
        Ok(match task.start() {
            Ok(_) => json!({ "state": app.get_task(&name)?.state }),
            Err(error) => json!({ "error": error.to_string() }),
        })
    }

    /// Starts `flaky` (failing every attempt) as task `name`, supervised:
    /// restarted on failure at most `intensity` times within a minute,
    /// 5 ms then doubling up to 50 ms apart. Returns its id, or the
    /// error the host gave.
    fn supervise(app: &App, name: String, intensity: u32) -> Result<Value> {
        let started = app
            .task("flaky")
            .name(&name)
            .args(json!({"fail_times": 100}))
            .restart(Restart::on_failure().intensity(intensity, 60_000).backoff(5, 50))
            .start();
        Ok(match started {
            Ok(id) => json!({ "id": id }),
            Err(error) => json!({ "error": error.to_string(), "kind": format!("{:?}", error.kind()) }),
        })
    }

    /// Logs `beat N` every `every_ms` until cancelled: a task whose every
    /// step is an effect (a host call) that can be seen in the log.
    fn heartbeat(app: &App, every_ms: u64) -> Result<()> {
        let mut beat = 0u64;
        loop {
            app.info(format!("beat {beat}"));
            app.sleep(every_ms)?;
            beat += 1;
        }
    }

    /// Connects to `addr` (`host:port`; a name is looked up through the
    /// host) with `std::net`, logs `connected to ADDR`, sends `send` and a
    /// newline, and returns the line it reads back. It blocks in that read
    /// until the server answers or the task is cancelled.
    fn tcp_echo(app: &App, addr: String, send: String) -> Result<Value> {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::net::TcpStream::connect(&addr)
            .map_err(|e| Error::msg(format!("connect to {addr}: {e}")))?;
        app.info(format!("connected to {addr}"));
        stream
            .write_all(format!("{send}\n").as_bytes())
            .map_err(|e| Error::msg(format!("write to {addr}: {e}")))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| Error::msg(format!("read from {addr}: {e}")))?;
        Ok(json!({ "reply": line.trim_end() }))
    }

    /// Opens `count` connections to `addr` and holds them all, `rounds`
    /// times over (closing them between rounds): `{"opened": N}`, with the
    /// error that stopped it if one did. With `hold`, it logs `holding N`
    /// after the last round and keeps its connections until that event.
    fn tcp_hoard(
        app: &App,
        addr: String,
        count: u32,
        rounds: u32,
        hold: Option<String>,
    ) -> Result<Value> {
        let mut opened = 0;
        let mut held = Vec::new();
        for _ in 0..rounds {
            held.clear();
            for _ in 0..count {
                match std::net::TcpStream::connect(&addr) {
                    Ok(stream) => held.push(stream),
                    Err(error) => {
                        return Ok(json!({ "opened": opened, "error": error.to_string() }));
                    }
                }
                opened += 1;
            }
        }
        if let Some(event) = hold {
            app.info(format!("holding {}", held.len()));
            app.wait_event(&event, None)?;
        }
        Ok(json!({ "opened": opened }))
    }

    /// Returns an error (the task fails without trapping).
    fn fail(_app: &App, reason: Option<String>) -> Result<()> {
        Err(Error::msg(reason.unwrap_or_else(|| "testkit failure on purpose".into())))
    }

    /// Writes a line to stdout and one to stderr, as plain `println!` code does.
    fn print(_app: &App, text: String) -> Result<()> {
        println!("{text}");
        eprintln!("err: {text}");
        Ok(())
    }
}

/// One op of the `kv` factory.
fn kv_op(
    b: &taskhost_guest_sdk::Bucket,
    op: &str,
    key: &str,
    value: &Option<Value>,
    size: Option<usize>,
    delta: Option<i64>,
    expected: &Option<Value>,
) -> Result<Value> {
    Ok(match op {
        "get" => b.get::<Value>(key)?.unwrap_or(Value::Null),
        "set" => {
            b.set(key, &value.clone().unwrap_or(Value::Null))?;
            Value::Bool(true)
        }
        "set_size" => {
            b.set_bytes(key, &vec![b'1'; size.unwrap_or(0)])?;
            Value::Bool(true)
        }
        "delete" => {
            b.delete(key)?;
            Value::Bool(true)
        }
        "exists" => Value::Bool(b.exists(key)?),
        "keys" => serde_json::json!(b.keys()?),
        "increment" => serde_json::json!(b.increment(key, delta.unwrap_or(1))?),
        "cas" => {
            let new = value.clone().unwrap_or(Value::Null);
            Value::Bool(b.compare_and_swap(key, expected.as_ref(), &new)?)
        }
        "update_add" => {
            let add = delta.unwrap_or(1);
            serde_json::json!(b.update(key, |n: Option<i64>| n.unwrap_or(0) + add)?)
        }
        // `key` is a comma-separated list: one batch call for all.
        "set_many" => {
            let text = serde_json::to_vec(&value.clone().unwrap_or(Value::Null))?;
            let pairs: Vec<(String, Vec<u8>)> = key
                .split(',')
                .map(|k| (k.to_string(), text.clone()))
                .collect();
            b.set_many(&pairs)?;
            Value::Bool(true)
        }
        "delete_many" => {
            let keys: Vec<String> = key.split(',').map(str::to_string).collect();
            b.delete_many(&keys)?;
            Value::Bool(true)
        }
        other => return Err(Error::msg(format!("no kv op {other:?}"))),
    })
}
