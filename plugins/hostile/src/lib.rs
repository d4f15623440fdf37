//! Plugins that misbehave on purpose. Each factory attacks the host one way;
//! the hostile-plugin tests prove the host contains every one of them: the
//! offender ends with a clear state and reason, its neighbours finish, the
//! host keeps serving, and memory goes back to where it was.

use serde_json::{Value, json};
use taskhost_guest_sdk::{App, Result, plugin};

/// "ok", or the kind and message of the error: what a giant-string call
/// got back (cut short: a host that echoed the giant string back would
/// otherwise blow up the report).
fn report<T: std::fmt::Debug>(result: Result<T>) -> Value {
    let short = |text: String| text.chars().take(200).collect::<String>();
    match result {
        Ok(value) => json!({ "ok": short(format!("{value:?}")) }),
        Err(error) => {
            json!({ "kind": format!("{:?}", error.kind()), "message": short(error.to_string()) })
        }
    }
}

/// Recurses without end; `black_box` keeps the frames from being folded
/// into a loop.
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    let deeper = descend(core::hint::black_box(depth + 1));
    core::hint::black_box(deeper)
}

plugin! {
    /// `loop {}`: not a single host call or memory access, only a back-edge
    /// for the epoch check to catch.
    fn infinite_loop(_app: &App) -> Result<()> {
        #[allow(clippy::empty_loop)]
        loop {}
    }

    /// Grows its memory 1 MiB at a time, keeping every chunk, until the
    /// host's memory limit refuses (then Rust aborts the instance).
    fn memory_bomb(app: &App) -> Result<()> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            if hoard.len().is_multiple_of(16) {
                app.debug(format!("holding {} MiB", hoard.len()));
            }
        }
    }

    /// Recurses until the wasm stack runs out.
    fn recursion(_app: &App) -> Result<u64> {
        Ok(descend(0))
    }

    /// Adds `lurker` tasks until the host says `limit`; then cancels them
    /// and reports how many it started and the error it got.
    fn spawn_bomb(app: &App) -> Result<Value> {
        let mut spawned = 0u32;
        let refusal = loop {
            let name = format!("bomblet-{spawned}");
            match app.task("lurker").name(&name).start() {
                Ok(_) => spawned += 1,
                Err(error) => break error,
            }
        };
        for i in 0..spawned {
            app.cancel_task(&format!("bomblet-{i}"))?;
        }
        Ok(json!({
            "spawned": spawned,
            "kind": format!("{:?}", refusal.kind()),
            "message": refusal.to_string(),
        }))
    }

    /// Waits for an event nobody sends: what the spawn bomb fills the
    /// worker with.
    fn lurker(app: &App) -> Result<()> {
        app.wait_event("never", None)?;
        Ok(())
    }

    /// Logs `lines` lines of `bytes` bytes each.
    fn log_flood(app: &App, bytes: usize, lines: Option<u32>) -> Result<()> {
        let line = "x".repeat(bytes);
        for _ in 0..lines.unwrap_or(1) {
            app.info(&line);
        }
        Ok(())
    }

    /// Hands a string of `mb` MiB to every host call that takes one, and
    /// reports what each call answered.
    fn giant_strings(app: &App, mb: usize) -> Result<Value> {
        let giant = "g".repeat(mb << 20);
        app.info(&giant);
        Ok(json!({
            "config": report(app.config::<Value>(&giant)),
            "dispatch_payload": report(app.dispatch("giant", &giant)),
            "dispatch_event": report(app.dispatch(&giant, "")),
            "wait_event": report(app.wait_event(&giant, Some(1))),
            "add_task_args": report(app.task("lurker").args(&giant).start()),
            "add_task_name": report(app.task("lurker").name(&giant).start()),
            "add_task_factory": report(app.task(&giant).start()),
            "add_task_plugin": report(app.task("lurker").plugin(&giant).start()),
            "get_task": report(app.get_task(&giant)),
            "cancel_task": report(app.cancel_task(&giant)),
        }))
    }

    /// Ignores cancellation: sleeps again whenever a sleep says `cancelled`,
    /// until it is interrupted.
    fn stubborn(app: &App) -> Result<()> {
        loop {
            if app.sleep(3_600_000).is_err() {
                app.info("ignoring cancellation");
            }
        }
    }

    /// Creates wasi:http header fields holding one `bytes`-long header
    /// each and forgets them, up to `max` of them: every one is held by
    /// the host, not by the task's memory. Returns how many it made, and
    /// the error that stopped it, if the host refused one.
    fn handle_hoard(_app: &App, bytes: usize, max: u32) -> Result<Value> {
        use wasi::http::types::Fields;
        let value = vec![b'a'; bytes];
        for made in 0..max {
            match Fields::from_list(&[("x-pad".to_string(), value.clone())]) {
                Ok(fields) => std::mem::forget(fields),
                Err(error) => return Ok(json!({ "made": made, "error": format!("{error:?}") })),
            }
        }
        Ok(json!({ "made": max }))
    }

    /// Adds schedules `flood-0`, `flood-1`, ... (each of `handle_hoard`
    /// once an hour) until `n` or the host's first refusal: schedules
    /// guests add are kept in storage and run after every restart.
    fn schedule_flood(app: &App, n: u32) -> Result<Value> {
        for i in 0..n {
            let spec = json!({
                "name": format!("flood-{i}"),
                "factory": "handle_hoard",
                "every": "1h",
                "args": {"bytes": 1, "max": 1},
            });
            if let Err(error) = app.add_schedule(&spec) {
                return Ok(json!({ "added": i, "error": error.to_string() }));
            }
        }
        Ok(json!({ "added": n }))
    }

    /// Panics (a Rust panic aborts the instance).
    fn panic(_app: &App) -> Result<()> {
        panic!("hostile panic on purpose");
    }

    /// Executes a wasm `unreachable` instruction.
    fn trap(_app: &App) -> Result<()> {
        #[cfg(target_family = "wasm")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_family = "wasm"))]
        unreachable!()
    }
}
