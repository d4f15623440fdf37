//! The seed's background tasks (Sanic's docs), as taskhost task factories.
//!
//! Each factory is a plain function; `plugin!` exports them under their own
//! names, which app.toml and scripts refer to: keep the names stable.

use taskhost_guest_sdk::{App, Connection, Message, Request, Result, TaskInfo, plugin};

plugin! {
    /// Sends one HTTP request (`method` default GET) to `url`, which app.toml
    /// must allow; returns `{status, headers, body}` with the body as text.
    fn fetch(
        app: &App,
        url: String,
        method: Option<String>,
        body: Option<String>,
        headers: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<serde_json::Value> {
        let headers = headers.unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let method = method.unwrap_or_else(|| "GET".into());
        let response =
            app.http()
                .request(&method, &url, &headers, body.as_deref().map(str::as_bytes))?;
        app.info(format!("{method} {url}: {}", response.status));
        Ok(serde_json::json!({
            "status": response.status,
            "headers": response.headers.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "body": String::from_utf8_lossy(&response.body),
        }))
    }

    /// Increments `key` of bucket `bucket` (default "default") `times` times,
    /// one atomic step each; returns the key's final value.
    fn kv_counter(app: &App, bucket: Option<String>, key: String, times: u64) -> Result<i64> {
        let bucket = app.kv(bucket.as_deref().unwrap_or("default"))?;
        let mut value = bucket.get::<i64>(&key)?.unwrap_or(0);
        for _ in 0..times {
            value = bucket.increment(&key, 1)?;
        }
        app.info(format!("{}/{key} = {value}", bucket.name()));
        Ok(value)
    }

    /// Polls `url` every `every_ms` with If-None-Match; when the body changed,
    /// counts the change in KV and dispatches `event` (default
    /// "feed.changed"). Stops after `times` polls (default: when cancelled).
    /// Watchers of one URL on several workers count each change once.
    fn watch(
        app: &App,
        url: String,
        every_ms: u64,
        times: Option<u64>,
        event: Option<String>,
    ) -> Result<serde_json::Value> {
        let event = event.unwrap_or_else(|| "feed.changed".into());
        // What survives a restart: the last ETag and body hash, the count.
        let state = app.kv("watch")?;
        let (etag_key, hash_key, changes_key) = (
            format!("{url} etag"),
            format!("{url} hash"),
            format!("{url} changes"),
        );
        let mut polls = 0u64;
        let mut failures = 0u64;
        loop {
            polls += 1;
            let etag: Option<String> = state.get(&etag_key)?;
            let headers: Vec<(&str, &str)> = etag
                .iter()
                .map(|tag| ("if-none-match", tag.as_str()))
                .collect();
            match app.http().request("GET", &url, &headers, None) {
                // Cancelled mid-request: unwind like any cancelled call.
                Err(error) if error.is_cancelled() => return Err(error),
                // The endpoint being down is the watcher's normal weather:
                // say so and try again next time.
                Err(error) => {
                    failures += 1;
                    app.warn(format!("poll {polls} of {url} failed: {error}"));
                }
                Ok(response) if response.status == 304 => {}
                Ok(response) if response.status == 200 => {
                    let hash = format!("{:016x}", fnv1a(&response.body));
                    let seen: Option<String> = state.get(&hash_key)?;
                    // Several watchers of one URL (one per worker) count a
                    // change once: only the one whose swap lands counts it.
                    if seen.as_deref() != Some(hash.as_str())
                        && state.compare_and_swap(&hash_key, seen.as_ref(), &hash)?
                    {
                        let tag = response.header("etag").map(str::to_string);
                        match &tag {
                            Some(tag) => state.set(&etag_key, tag)?,
                            None => state.delete(&etag_key)?,
                        }
                        let changes = state.increment(&changes_key, 1)?;
                        let payload = serde_json::json!({
                            "url": url,
                            "etag": tag,
                            "changes": changes,
                            "bytes": response.body.len(),
                            // Small bodies travel with the event; waiters
                            // fetch big ones themselves.
                            "body": (response.body.len() <= 16 * 1024)
                                .then(|| String::from_utf8_lossy(&response.body)),
                        });
                        let woken = app.dispatch(&event, &payload.to_string())?;
                        app.info(format!(
                            "{url} changed (change {changes}); told {woken} task(s)"
                        ));
                    }
                }
                Ok(response) => {
                    failures += 1;
                    app.warn(format!("poll {polls} of {url}: status {}", response.status));
                }
            }
            if times.is_some_and(|times| polls >= times) {
                break;
            }
            app.sleep(every_ms)?;
        }
        Ok(serde_json::json!({
            "polls": polls,
            "failures": failures,
            "changes": state.get::<u64>(&changes_key)?.unwrap_or(0),
            "etag": state.get::<String>(&etag_key)?,
        }))
    }

    /// Waits `delay_ms` (default 5000), then announces that the server started.
    fn notify_server_started_after_five_seconds(app: &App, delay_ms: Option<u64>) -> Result<()> {
        app.sleep(delay_ms.unwrap_or(5000))?;
        app.info("Server successfully started!");
        Ok(())
    }

    /// Logs the name of the app it was given, like Sanic's injected `app`.
    fn auto_inject(app: &App, delay_ms: Option<u64>) -> Result<String> {
        app.sleep(delay_ms.unwrap_or(0))?;
        let name = app.name();
        app.info(&name);
        Ok(name)
    }

    /// POSTs `{"step": i}` to `url` for i in 1..=`steps`, sleeping
    /// `pause_ms` between them; returns `steps`. The stable example of a
    /// task that resumes after a crash instead of running again
    /// (`taskhost add examples post_steps --resume`, docs/durable.md): the
    /// POSTs made before the crash are not made again.
    fn post_steps(app: &App, url: String, steps: u32, pause_ms: u64) -> Result<u32> {
        for step in 1..=steps {
            if step > 1 {
                app.sleep(pause_ms)?;
            }
            let response = app.http().post_json(&url, &serde_json::json!({"step": step}))?;
            if response.status >= 300 {
                return Err(taskhost_guest_sdk::Error::msg(format!(
                    "step {step}: {url} answered {}",
                    response.status
                )));
            }
            app.info(format!("step {step} of {steps} posted"));
        }
        Ok(steps)
    }

    /// Does some slow work (sleeps `ms`, default 100) and reports it.
    fn slow_work(app: &App, ms: Option<u64>) -> Result<()> {
        app.sleep(ms.unwrap_or(100))?;
        app.info("slow work done");
        Ok(())
    }

    /// Does `num` steps of slow work, 10 ms each, and returns `num`.
    fn even_slower(app: &App, num: u32) -> Result<u32> {
        for _ in 0..num {
            app.sleep(10)?;
        }
        app.info(format!("even slower work done after {num} steps"));
        Ok(num)
    }

    /// Returns `x * x`, after sleeping `ms` (default 0): the child of
    /// `fan_out`.
    fn square(app: &App, x: u64, ms: Option<u64>) -> Result<u64> {
        if let Some(ms) = ms
            && let Err(error) = app.sleep(ms)
        {
            if error.is_cancelled() {
                app.info(format!("square {x}: cancelled"));
            }
            return Err(error);
        }
        x.checked_mul(x)
            .ok_or_else(|| taskhost_guest_sdk::Error::permanent(format!("{x} squared overflows")))
    }

    /// Fan-out / fan-in: starts `n` children of `square` (`x` = 1..=n,
    /// each sleeping `ms` first), joins them all and returns the sum of
    /// their results (n = 100: 338,350). Its children are cancelled with
    /// it.
    fn fan_out(app: &App, n: u32, ms: Option<u64>) -> Result<u64> {
        let children = (1..=u64::from(n))
            .map(|x| {
                app.task("square")
                    .args(serde_json::json!({"x": x, "ms": ms}))
                    .child()
                    .start()
            })
            .collect::<Result<Vec<u64>>>()?;
        app.info(format!("fan_out: started {n} children"));
        let ended = app
            .join_all(&children, None)?
            .expect("a join with no timeout ends with the tasks");
        let mut sum = 0u64;
        for child in &ended {
            sum += child.result_as::<u64>()?;
        }
        app.info(format!("fan_out: {n} squares sum to {sum}"));
        Ok(sum)
    }

    /// Sleeps `ms` (default an hour); if cancelled, logs `cleanup` and stops.
    fn sleeper(app: &App, ms: Option<u64>) -> Result<()> {
        match app.sleep(ms.unwrap_or(3_600_000)) {
            Ok(()) => {
                app.info("slept");
                Ok(())
            }
            Err(error) => {
                if error.is_cancelled() {
                    app.info("cleanup");
                }
                Err(error)
            }
        }
    }

    /// Computes forever without a single host call: only epoch interruption
    /// can stop it (asyncio cannot cancel this).
    fn spinner(_app: &App) -> Result<()> {
        let mut turns: u64 = 0;
        loop {
            turns = core::hint::black_box(turns.wrapping_add(1));
        }
    }

    /// The seed's websocket handler, for a `[[routes]] websocket` route:
    /// starts `receiver:<connection id>` (which logs what the client
    /// sends), then sends "A message" each time `event` (default
    /// `my.custom.event`) is dispatched. When the client closes, its
    /// cleanup cancels the receiver and purges ended tasks. Without a
    /// connection (a plain task) it handles `events` dispatches the same
    /// way, its receiver waiting for `message` events instead.
    fn feed(
        app: &App,
        request: Option<Request>,
        events: Option<u32>,
        event: Option<String>,
    ) -> Result<u32> {
        let connection = request.as_ref().map(Request::connection).transpose()?;
        let receiver = format!(
            "receiver:{}",
            connection.map_or(app.id(), |c| c.id())
        );
        app.task("receiver")
            .name(&receiver)
            .args(connection.map(|c| serde_json::json!({ "connection": c.id() })))
            .start()?;
        let event = event.unwrap_or_else(|| "my.custom.event".into());
        let mut handled = 0;
        let outcome = loop {
            if events.is_some_and(|events| handled >= events) {
                break Ok(handled);
            }
            if let Err(error) = app.wait_event(&event, None) {
                break Err(error);
            }
            if let Some(connection) = connection
                && let Err(error) = connection.send("A message")
            {
                break Err(error);
            }
            handled += 1;
        };
        // The seed's `finally:` runs however the loop ended, cancelled too.
        let cancelled = app.cancel_task(&receiver);
        app.purge_tasks();
        cancelled?;
        outcome
    }

    /// The receiving half of `feed`: logs each message of websocket
    /// `connection` until it is over; without one, waits for `event`
    /// (default `message`) forever, logging each payload.
    fn receiver(app: &App, connection: Option<u64>, event: Option<String>) -> Result<()> {
        if let Some(id) = connection {
            let connection = Connection::new(id);
            while let Some(message) = connection.recv()? {
                match message {
                    Message::Text(text) => app.info(format!("received {text}")),
                    Message::Binary(bytes) => app.info(format!("received {} bytes", bytes.len())),
                }
            }
            return Ok(());
        }
        let event = event.unwrap_or_else(|| "message".into());
        loop {
            if let Some(payload) = app.wait_event(&event, None)? {
                app.info(format!("received {payload}"));
            }
        }
    }

    /// A webhook's handler (`[[routes]] http = ...`): returns
    /// `{"received": <the request's body>}`, the body as JSON when it was
    /// sent as JSON.
    fn on_hook(app: &App, request: Request) -> Result<serde_json::Value> {
        app.info(format!(
            "{} {} from {}",
            request.method.as_deref().unwrap_or("?"),
            request.path,
            request.remote
        ));
        Ok(serde_json::json!({ "received": request.body }))
    }

    /// Starts a `target` task named `victim` (with `args`), waits
    /// `after_ms`, cancels it, and logs how long the cancel took in
    /// microseconds. Returns the victim's final info.
    fn canceller(
        app: &App,
        target: String,
        after_ms: u64,
        args: Option<serde_json::Value>,
    ) -> Result<TaskInfo> {
        app.task(&target).name("victim").args(args).start()?;
        app.sleep(after_ms)?;
        let begun = std::time::Instant::now();
        let victim = app.cancel_task("victim")?;
        app.info(format!("cancel took {} us", begun.elapsed().as_micros()));
        Ok(victim)
    }
}

/// FNV-1a: a body fingerprint that needs no dependency (not for security:
/// it only tells a changed body from the same one).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
