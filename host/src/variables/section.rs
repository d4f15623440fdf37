//! `[plugins.NAME.variables]`: the values a plugin's tasks read through
//! `wasi:config/store`, checked when app.toml is read.
//!
//! `wasi:config` values are strings, so a value is a string, a number or
//! a boolean (given to the guest as text, normalised the way TOML reads
//! it: `3`, `0.5`, `true`; `1e3` is `1000.0`, `0x10` is `16`), or
//! a secret read at start, as in `[config]`: `{ env = "NAME" }` from the
//! host's environment, `{ file = "PATH" }` from a file beside app.toml. A
//! secret is never logged; `Debug` and `taskhost check` say where it came
//! from.

use crate::config::value::ConfigValue;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use wasmtime_wasi_config::WasiConfigVariables;

/// Longest variable name: names are identifiers (`database_url`), and
/// a name longer than this is a mistake, not a need.
pub(crate) const MAX_KEY_BYTES: usize = 256;

/// The table as written.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub(crate) struct RawVariables(BTreeMap<String, toml::Value>);

/// One plugin's variables, checked, with secrets read.
#[derive(Default)]
pub(crate) struct Variables {
    /// Each value as app.toml gave it: what `Debug` and `taskhost check`
    /// show (a secret as its source).
    values: BTreeMap<String, ConfigValue>,
    /// The same values as `wasi:config/store` serves them, built once
    /// here rather than at every task's start.
    served: WasiConfigVariables,
}

impl RawVariables {
    /// Checks the table `[plugins.NAME.variables]` (named by `table`),
    /// resolving secret files against `base`.
    pub(crate) fn checked(self, table: &str, base: &Path) -> Result<Variables> {
        let mut variables = Variables::default();
        for (key, value) in self.0 {
            if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
                bail!(
                    "{table}: {key:?} is not a variable name (1 to {MAX_KEY_BYTES} bytes, no \
                     control characters)"
                );
            }
            let value = match value {
                toml::Value::Table(_) | toml::Value::String(_) => ConfigValue::resolve(value, base)
                    .map_err(|error| anyhow::anyhow!("{table}: variable `{key}`: {error:#}"))?,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    ConfigValue {
                        value: serde_json::Value::String(value.to_string()),
                        secret: None,
                    }
                }
                toml::Value::Array(_) | toml::Value::Datetime(_) => bail!(
                    "{table}: variable `{key}` is {}: wasi:config values are strings; give a \
                     string, a number, a boolean, or a secret as {{ env = \"NAME\" }} or \
                     {{ file = \"PATH\" }}",
                    value.type_str()
                ),
            };
            let serde_json::Value::String(text) = &value.value else {
                bail!(
                    "{table}: variable `{key}` is a table: a secret is written as exactly \
                     {{ env = \"NAME\" }} or {{ file = \"PATH\" }}; anything else must be a \
                     string, a number or a boolean"
                );
            };
            variables.served.insert(key.clone(), text.clone());
            variables.values.insert(key, value);
        }
        Ok(variables)
    }
}

impl Variables {
    /// The variables' names as `taskhost check` shows them: a secret with
    /// where it came from, never a value.
    pub(crate) fn described(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|(key, value)| value.described(key))
            .collect()
    }

    /// What `wasi:config/store` serves to the plugin's tasks.
    pub(crate) fn served(&self) -> &WasiConfigVariables {
        &self.served
    }
}

impl fmt::Debug for Variables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(&self.values).finish()
    }
}

impl PartialEq for Variables {
    fn eq(&self, other: &Variables) -> bool {
        self.values == other.values
    }
}

impl Eq for Variables {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Variables> {
        let raw: RawVariables = toml::from_str(text).unwrap();
        raw.checked("app.toml: [plugins.p.variables]", &std::env::temp_dir())
    }

    #[test]
    fn strings_numbers_and_booleans_are_served_as_text() {
        let variables =
            check("url = \"postgres://db\"\nport = 5432\nratio = 0.5\nbeta = true").unwrap();
        assert_eq!(
            format!("{variables:?}"),
            r#"{"beta": String("true"), "port": String("5432"), "ratio": String("0.5"), "url": String("postgres://db")}"#
        );
    }

    #[test]
    fn a_secret_is_read_and_shown_only_by_its_source() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let raw: RawVariables = toml::from_str("token = { file = \"token\" }").unwrap();
        let variables = raw.checked("t", dir.path()).unwrap();
        let shown = format!("{variables:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("secret from file"), "{shown}");
    }

    #[test]
    fn arrays_tables_and_bad_names_are_refused_naming_the_variable() {
        let error = check("hosts = [\"a\", \"b\"]").unwrap_err().to_string();
        assert!(
            error.starts_with("app.toml: [plugins.p.variables]: variable `hosts` is array"),
            "{error}"
        );
        let error = check("db = { host = \"x\", port = 1 }")
            .unwrap_err()
            .to_string();
        assert!(error.contains("variable `db` is a table"), "{error}");
        let error = check("\"\" = \"x\"").unwrap_err().to_string();
        assert!(error.contains("is not a variable name"), "{error}");
        let error = check("token = { env = \"TASKHOST_NO_SUCH_VARIABLE_HERE\" }")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("variable `token`")
                && error.contains("TASKHOST_NO_SUCH_VARIABLE_HERE is not set"),
            "{error}"
        );
    }
}
