//! Values app.toml holds that outlive its parsing: a `[config]` value (or a
//! secret read from the environment or a file), and the bounded file read
//! every path app.toml names goes through. Low in the layers so that a host
//! interface's own `app.toml` section (`variables::section`) can use them.

use anyhow::{Context, Result, bail};
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest secret file read into `[config]`: a token or a key, not data.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A `[config]` value: written in app.toml, or a secret read at start from
/// the host's environment (`{ env = "API_TOKEN" }`) or a file (`{ file =
/// "secrets/token" }`, relative to app.toml) so that it need not be in
/// app.toml. A secret reaches tasks as a string; it is never logged, and
/// `Debug` and `taskhost check` show where it came from, not what it is.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigValue {
    /// What `app.config(key)` returns, as JSON.
    pub value: serde_json::Value,
    /// Where a secret came from; none for a value written in app.toml.
    pub secret: Option<SecretSource>,
}

/// Where a secret `[config]` value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the host process.
    Env(String),
    /// A file (the path as resolved against app.toml's directory).
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

impl fmt::Debug for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.secret {
            Some(source) => write!(f, "<secret from {source}>"),
            None => write!(f, "{:?}", self.value),
        }
    }
}

impl ConfigValue {
    /// How `taskhost check` names the value of `key`: the key, and for a
    /// secret where it came from, never the value.
    pub(crate) fn described(&self, key: &str) -> String {
        match &self.secret {
            Some(source) => format!("{key} (secret, from {source})"),
            None => key.to_string(),
        }
    }

    /// A TOML value as the `[config]` value it stands for: a table of
    /// exactly `env = "NAME"` or `file = "PATH"` is a secret, read now.
    pub(crate) fn resolve(value: toml::Value, base: &Path) -> Result<ConfigValue> {
        let source = match &value {
            toml::Value::Table(table) if table.len() == 1 => match table.iter().next() {
                Some((key, toml::Value::String(name))) if key == "env" => {
                    Some(SecretSource::Env(name.clone()))
                }
                Some((key, toml::Value::String(path))) if key == "file" => {
                    Some(SecretSource::File(base.join(path)))
                }
                _ => None,
            },
            _ => None,
        };
        let Some(source) = source else {
            return Ok(ConfigValue {
                value: toml_to_json(value)?,
                secret: None,
            });
        };
        let text = match &source {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(text) => text,
                Err(std::env::VarError::NotPresent) => {
                    bail!("environment variable {name} is not set (set it, or give the value)")
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    bail!("environment variable {name} is not UTF-8")
                }
            },
            SecretSource::File(path) => read_secret(path)
                .with_context(|| format!("cannot read the secret file {}", path.display()))?,
        };
        Ok(ConfigValue {
            value: serde_json::Value::String(text),
            secret: Some(source),
        })
    }
}

/// A secret file's text, without its final newline (see [`read_bounded`]).
fn read_secret(path: &Path) -> Result<String> {
    let bytes = read_bounded(path, MAX_SECRET_BYTES, "a secret")?;
    let mut text = String::from_utf8(bytes).context("it is not UTF-8 text")?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// The bytes of the file at `path` that app.toml (or an operator) names: a
/// regular file (following links) of at most `max` bytes, `what` naming it
/// in the error ("a component"). Anything else is refused before it is
/// read, and a FIFO or device before it is even opened, since opening a
/// FIFO blocks until a writer comes, and reading `/dev/zero` never ends.
/// Blocking: call it off the async threads.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let refuse = |meta: &std::fs::Metadata| -> Result<()> {
        if !meta.is_file() {
            bail!("it is {}, not a regular file", file_kind(meta));
        }
        if meta.len() > max {
            bail!(
                "it is {} bytes, more than {what} may be ({max} bytes, {} MiB)",
                meta.len(),
                max >> 20
            );
        }
        Ok(())
    };
    refuse(&std::fs::metadata(path)?)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Should the path be swapped for a FIFO since the check above, the
        // open still does not wait for a writer.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(
            (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32,
        );
    }
    let file = options.open(path)?;
    // What was opened is what counts.
    refuse(&file.metadata()?)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        bail!("it grew past {max} bytes while being read");
    }
    Ok(bytes)
}

/// "a directory", "a FIFO"...: what a path that is not a file is.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// TOML has datetimes, JSON does not: they become RFC 3339 strings.
pub(crate) fn toml_to_json(value: toml::Value) -> Result<serde_json::Value> {
    use serde_json::Value as J;
    Ok(match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .with_context(|| format!("{f} has no JSON representation"))?,
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<Vec<_>>>()?,
        ),
        toml::Value::Table(table) => J::Object(
            table
                .into_iter()
                .map(|(k, v)| Ok((k, toml_to_json(v)?)))
                .collect::<Result<serde_json::Map<_, _>>>()?,
        ),
    })
}
