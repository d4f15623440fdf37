//! The seed's background tasks (Sanic's docs), as taskhost task factories.
//!
//! Each factory is a plain function; `plugin!` exports them under their own
//! names, which app.toml and scripts refer to.

use taskhost_guest_sdk::{App, Result, plugin};

plugin! {
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
}
