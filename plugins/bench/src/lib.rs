//! The tasks `cargo bench -p taskhost --bench speed` measures: each does one
//! thing, so a figure means one thing.

use taskhost_guest_sdk::{App, CancelStage, Error, Request, Result, TaskState, plugin};

plugin! {
    /// Returns at once: the cost of a task is then all start-up and end.
    fn noop(_app: &App) -> Result<()> {
        Ok(())
    }

    /// Sleeps until cancelled: an idle task, and a task blocked in a host
    /// call.
    fn idle(app: &App) -> Result<()> {
        app.sleep(u64::MAX)
    }

    /// A websocket route's idle task: waits in `recv` on its connection
    /// until the client closes (then it is cancelled), echoing anything.
    fn connection_idle(_app: &App, request: Request) -> Result<()> {
        let connection = request.connection()?;
        while let Some(message) = connection.recv()? {
            connection.send(message)?;
        }
        Ok(())
    }

    /// Waits for `event` and returns its payload: a waiter of a dispatch.
    fn wait(app: &App, event: String) -> Result<Option<String>> {
        app.wait_event(&event, None)
    }

    /// Computes forever without host calls: only epochs can stop it.
    fn spin(_app: &App) -> Result<()> {
        let mut turns: u64 = 0;
        loop {
            turns = core::hint::black_box(turns.wrapping_add(1));
        }
    }

    /// Makes `n` `app.task-id` calls, the cheapest round trip to the host.
    fn calls(app: &App, n: u64) -> Result<u64> {
        let mut sum: u64 = 0;
        for _ in 0..n {
            sum = sum.wrapping_add(app.id());
        }
        Ok(sum)
    }

    /// `n` times: starts an `idle` task named `sleeper` on this worker, lets
    /// it reach its sleep, and times `cancel_task` of it until it has ended
    /// (cooperatively), in nanoseconds: a guest doing what Sanic's
    /// `await app.cancel_task(name)` does, for the bench's Sanic column.
    fn cancel_sleepers(app: &App, n: u32) -> Result<Vec<u64>> {
        let mut samples = Vec::with_capacity(n as usize);
        for _ in 0..n {
            app.task("idle").name("sleeper").start()?;
            // As the Sanic script does: let the sleeper reach its sleep.
            app.sleep(1)?;
            while app.get_task("sleeper")?.state != TaskState::Running {
                app.sleep(1)?;
            }
            let begun = std::time::Instant::now();
            let info = app.cancel_task("sleeper")?;
            samples.push(begun.elapsed().as_nanos() as u64);
            if info.cancel_stage != Some(CancelStage::Cooperative) {
                return Err(Error::msg(format!("the sleeper ended {:?}", info.state)));
            }
            app.purge_tasks();
        }
        Ok(samples)
    }

    /// `n` times: starts a `noop` child on this worker and joins it until
    /// it has ended (its result read back), timed in nanoseconds: a
    /// fan-out / fan-in round trip for one child, what Sanic's
    /// `await app.add_task(coro, name=...)` does, next to `cancel_sleepers`.
    fn join_children(app: &App, n: u32) -> Result<Vec<u64>> {
        let mut samples = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let begun = std::time::Instant::now();
            let child = app.task("noop").child().start()?;
            let ended = app
                .join(child, None)?
                .ok_or_else(|| Error::msg("a join with no timeout timed out"))?;
            samples.push(begun.elapsed().as_nanos() as u64);
            if ended.state != TaskState::Done {
                return Err(Error::msg(format!("the child ended {:?}", ended.state)));
            }
            app.purge_tasks();
        }
        Ok(samples)
    }

    /// For the journal's cost: `n` host calls of one kind (`read`: an
    /// `app.config` read; `write`: a key-value set), then a sleep of
    /// `then_ms` if given. Each is a journaled step of a resuming task.
    fn journaled_calls(app: &App, kind: String, n: u64, then_ms: Option<u64>) -> Result<u64> {
        let bucket = app.kv("bench")?;
        for i in 0..n {
            match kind.as_str() {
                "read" => {
                    let _: Option<serde_json::Value> = app.config("greeting")?;
                }
                _ => bucket.set("k", &i)?,
            }
        }
        if let Some(ms) = then_ms {
            app.sleep(ms)?;
        }
        Ok(n)
    }

    /// A compute kernel with a loop back-edge per step (where epoch checks
    /// go): `rounds` of xorshift64.
    fn kernel(_app: &App, rounds: u64) -> Result<u64> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..rounds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        Ok(x)
    }
}
