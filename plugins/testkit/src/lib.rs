//! Factories the integration tests use to observe the host from inside a task.

use taskhost_guest_sdk::{App, Error, Result, plugin};

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

    /// Returns the `[config]` value of `key` as the task's result.
    fn config_value(app: &App, key: String) -> Result<Option<serde_json::Value>> {
        let value: Option<serde_json::Value> = app.config(&key)?;
        app.info(format!("config {key} = {}", serde_json::to_string(&value)?));
        Ok(value)
    }

    /// Sleeps `ms`, then logs `woke`.
    fn nap(app: &App, ms: u64) -> Result<()> {
        app.sleep(ms)?;
        app.info("woke");
        Ok(())
    }

    /// Panics (Rust panic, which aborts the instance).
    fn panic(_app: &App) -> Result<()> {
        panic!("testkit panic on purpose");
    }

    /// Executes a wasm `unreachable` instruction.
    fn trap(_app: &App) -> Result<()> {
        #[cfg(target_family = "wasm")]
        core::arch::wasm32::unreachable();
        #[cfg(not(target_family = "wasm"))]
        unreachable!()
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
