//! A plugin whose builds can be told apart: `VERSIONED_TAG=v2 taskhost
//! build plugins/versioned` bakes "v2" into it (default "v1"). The
//! hot-loading tests load one build over another.

use taskhost_guest_sdk::{App, Result, plugin};

const TAG: &str = match option_env!("VERSIONED_TAG") {
    Some(tag) => tag,
    None => "v1",
};

plugin! {
    /// Logs and returns this build's tag.
    fn report(app: &App) -> Result<String> {
        app.info(format!("running {TAG}"));
        Ok(TAG.to_string())
    }

    /// Waits for `event`, then logs and returns this build's tag: a task
    /// that is still running when a new build is loaded.
    fn linger(app: &App, event: String) -> Result<String> {
        app.info(format!("lingering on {TAG}"));
        app.wait_event(&event, None)?;
        app.info(format!("finished on {TAG}"));
        Ok(TAG.to_string())
    }
}
