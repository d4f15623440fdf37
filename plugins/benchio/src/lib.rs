//! The tasks of `cargo bench -p taskhost --bench speed` that do real I/O.
//! Kept apart from `plugins/bench`: this component imports `wasi:http` and
//! `wasi:keyvalue`, so its `noop` measures what those imports add to a
//! task's start against `bench`'s.

use taskhost_guest_sdk::{App, Result, plugin};

plugin! {
    /// Returns at once, from a component that imports wasi:http and
    /// wasi:keyvalue.
    fn noop(_app: &App) -> Result<()> {
        Ok(())
    }

    /// One key-value get and one set of `key` in bucket `bench`.
    fn kv_get_set(app: &App, key: String) -> Result<u64> {
        let bucket = app.kv("bench")?;
        let seen: u64 = bucket.get(&key)?.unwrap_or(0);
        bucket.set(&key, &(seen + 1))?;
        Ok(seen)
    }

    /// One HTTP GET of `url`; returns the status.
    fn http_get(app: &App, url: String) -> Result<u16> {
        Ok(app.http().get(&url)?.status)
    }
}
