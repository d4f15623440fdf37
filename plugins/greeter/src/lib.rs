use taskhost_guest_sdk::{App, Error, Result, plugin};

plugin! {
    /// Greets after `delay_ms`, with the greeting from [config].
    fn notify_started(app: &App, delay_ms: Option<u64>) -> Result<()> {
        app.sleep(delay_ms.unwrap_or(1000))?;   // fails with `cancelled` if the task is cancelled
        let greeting: String = app.config("greeting")?.unwrap_or_else(|| "hello".into());
        app.info(format!("{greeting} from {} on worker {:?}", app.name(), app.worker()));
        Ok(())
    }

    /// Adds two numbers; the sum becomes the task's result.
    fn add(app: &App, a: i64, b: i64) -> Result<i64> {
        if a.checked_add(b).is_none() {
            return Err(Error::msg("overflow"));
        }
        app.debug("adding");
        Ok(a + b)
    }
}
