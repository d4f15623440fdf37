//! The tasks `cargo bench -p taskhost --bench speed` measures: each does one
//! thing, so a figure means one thing.

use taskhost_guest_sdk::{App, Request, Result, plugin};

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
