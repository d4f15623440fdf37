use crate::__private::bindings::taskhost::plugin::{app, types};
use crate::{Error, Result};
use serde::de::DeserializeOwned;

/// The `app` handle of the running task: Sanic's injected `app`.
///
/// Every task runs in its own instance of the plugin, so the handle always
/// speaks for the task it was passed to; there is nothing to look up or
/// share. It is cheap to create and carries no state of its own.
#[derive(Debug)]
pub struct App {
    _private: (),
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl App {
    #[doc(hidden)]
    pub fn new() -> Self {
        App { _private: () }
    }

    /// The application's name, from `name` in app.toml.
    pub fn name(&self) -> String {
        app::name()
    }

    /// Index of the worker this task runs on; `None` for a `scope = "main"`
    /// task, which runs once before the workers start.
    pub fn worker(&self) -> Option<u32> {
        app::worker()
    }

    /// The `[config]` value for `key`, decoded as `T`.
    ///
    /// `Ok(None)` when the key is absent; an error naming the key when the
    /// value does not decode as `T`.
    pub fn config<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match app::config(key) {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| Error::msg(format!("config `{key}`: {e}"))),
        }
    }

    /// Logs `message` at `level`, attributed to this task by the host.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let level = match level {
            Level::Trace => types::Level::Trace,
            Level::Debug => types::Level::Debug,
            Level::Info => types::Level::Info,
            Level::Warn => types::Level::Warn,
            Level::Error => types::Level::Error,
        };
        app::log(level, message.as_ref());
    }

    /// Logs at debug level.
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(Level::Debug, message)
    }

    /// Logs at info level.
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message)
    }

    /// Logs at error level.
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(Level::Error, message)
    }

    /// Suspends this task for `ms` milliseconds; other tasks keep running.
    ///
    /// Fails with a cancelled [`Error`] as soon as the task is cancelled:
    /// propagate it with `?` after any cleanup.
    pub fn sleep(&self, ms: u64) -> Result<()> {
        app::sleep(ms).map_err(Error::from_wit)
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}
