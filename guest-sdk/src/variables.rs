//! The plugin's variables (`[plugins.NAME.variables]` in app.toml), read
//! through the standard `wasi:config/store` interface:
//!
//! ```no_run
//! # use taskhost_guest_sdk::*;
//! # fn example(app: &App) -> Result<()> {
//! let url = app.variable("database_url")?.ok_or_else(|| Error::msg("no database_url"))?;
//! for (key, _value) in app.variables()? {
//!     app.info(format!("{key} is set"));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Values are strings (a number or a boolean in app.toml arrives as its
//! text: `"5432"`, `"true"`), one set per plugin, read-only. The app-wide
//! `[config]` table is [`App::config`], which decodes JSON values instead.

use crate::__private::bindings::wasi::config::store;
use crate::{App, Error, Result};

/// The host's error, as an [`Error`] naming what was read.
fn error(what: &str, error: store::Error) -> Error {
    let message = match error {
        store::Error::Upstream(message) | store::Error::Io(message) => message,
    };
    Error::msg(format!("cannot read {what}: {message}"))
}

impl App {
    /// The plugin's variable `key`; `Ok(None)` when app.toml does not set
    /// it.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// // [plugins.NAME.variables] pg_url = { env = "PG_URL" }
    /// let url = app.variable("pg_url")?.ok_or_else(|| Error::permanent("no pg_url"))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn variable(&self, key: &str) -> Result<Option<String>> {
        store::get(key).map_err(|e| error(&format!("variable `{key}`"), e))
    }

    /// All of the plugin's variables, as (name, value) pairs in no
    /// particular order.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// for (key, _value) in app.variables()? {
    ///     app.debug(format!("variable {key}"));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn variables(&self) -> Result<Vec<(String, String)>> {
        store::get_all().map_err(|e| error("the plugin's variables", e))
    }
}
