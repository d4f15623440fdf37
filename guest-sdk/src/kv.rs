//! Key-value state for tasks, over the standard `wasi:keyvalue` interfaces:
//! values outlive the task's instance and the host process.
//!
//! ```no_run
//! # use taskhost_guest_sdk::*;
//! # fn example(app: &App) -> Result<()> {
//! let counters = app.kv("counters")?;
//! let seen: u64 = counters.increment("seen", 1)? as u64;
//! counters.set("last", &serde_json::json!({ "at": seen }))?;
//! let last: Option<serde_json::Value> = counters.get("last")?;
//! # Ok(())
//! # }
//! ```
//!
//! A bucket is the plugin's own unless app.toml grants a shared bucket of
//! that name (`[plugins.NAME.grants] kv = ["shared"]`): no other plugin can
//! see it. Values are JSON through serde ([`Bucket::get`], [`Bucket::set`])
//! or raw bytes ([`Bucket::get_bytes`], [`Bucket::set_bytes`]); counters
//! from [`Bucket::increment`] are JSON numbers. A write over a bound of
//! `[limits]` fails with [`ErrorKind::Limit`](crate::ErrorKind::Limit).

use crate::__private::WitError;
use crate::__private::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::{App, Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One bucket of key-value state; from [`App::kv`].
pub struct Bucket {
    name: String,
    inner: store::Bucket,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

/// The host's error, as an [`Error`] whose message names the bucket.
fn error(bucket: &str, error: store::Error) -> Error {
    match error {
        store::Error::Other(message) => match message.strip_prefix("limit: ") {
            Some(limit) => Error::from_wit(WitError::Limit(format!("bucket {bucket}: {limit}"))),
            None => Error::msg(format!("bucket {bucket}: {message}")),
        },
        store::Error::NoSuchStore => Error::msg(format!("bucket {bucket}: no such store")),
        store::Error::AccessDenied => Error::msg(format!("bucket {bucket}: access denied")),
    }
}

impl App {
    /// Opens the bucket `name` (ASCII letters, digits, `-`, `_`, `.`):
    /// the plugin's own, or the shared one app.toml grants by that name.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let counters = app.kv("counters")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn kv(&self, name: &str) -> Result<Bucket> {
        let inner = store::open(name).map_err(|e| error(name, e))?;
        Ok(Bucket {
            name: name.to_string(),
            inner,
        })
    }
}

impl Bucket {
    /// The name it was opened by.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fail(&self, e: store::Error) -> Error {
        error(&self.name, e)
    }

    /// The value of `key` decoded from JSON; `None` when absent.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let last: Option<serde_json::Value> = app.kv("state")?.get("last")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_bytes(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::msg(format!(
                    "bucket {}: the value of key {key:?} is not the JSON expected: {e}",
                    self.name
                ))
            }),
        }
    }

    /// Stores `value` as JSON under `key`.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.kv("state")?.set("last", &serde_json::json!({"etag": "abc"}))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.set_bytes(key, &serde_json::to_vec(value)?)
    }

    /// The raw bytes of `key`.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let raw: Option<Vec<u8>> = app.kv("blobs")?.get_bytes("thumbnail")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).map_err(|e| self.fail(e))
    }

    /// Stores raw bytes under `key`.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.kv("blobs")?.set_bytes("thumbnail", &[0x89, b'P', b'N', b'G'])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_bytes(&self, key: &str, value: &[u8]) -> Result<()> {
        self.inner.set(key, value).map_err(|e| self.fail(e))
    }

    /// Removes `key`; absent keys are not an error.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.kv("state")?.delete("last")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).map_err(|e| self.fail(e))
    }

    /// Whether `key` has a value.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let seen: bool = app.kv("state")?.exists("last")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).map_err(|e| self.fail(e))
    }

    /// Every key, in byte order.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let keys: Vec<String> = app.kv("state")?.keys()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .inner
                .list_keys(cursor.as_deref())
                .map_err(|e| self.fail(e))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the integer at `key` (absent: 0), atomically, and
    /// returns the sum: two tasks incrementing one key never lose a step.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let visits: i64 = app.kv("counters")?.increment("visits", 1)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        atomics::increment(&self.inner, key, delta).map_err(|e| self.fail(e))
    }

    /// Sets `key` to `new` only if its value is still `expected` (`None`:
    /// absent), compared as JSON; whether it did. Nothing is written when
    /// it did not.
    pub fn compare_and_swap<T: Serialize + ?Sized>(
        &self,
        key: &str,
        expected: Option<&T>,
        new: &T,
    ) -> Result<bool> {
        let cas = atomics::Cas::new(&self.inner, key).map_err(|e| self.fail(e))?;
        let current = cas.current().map_err(|e| self.fail(e))?;
        let expected = expected.map(serde_json::to_value).transpose()?;
        let current = current
            .map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes))
            .transpose()
            .ok()
            .flatten();
        if current != expected {
            return Ok(false);
        }
        match atomics::swap(cas, &serde_json::to_vec(new)?) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(self.fail(e)),
        }
    }

    /// Replaces the value of `key` with `f(current)`, atomically: retried
    /// on a fresh read whenever another writer got in between. Returns the
    /// value written.
    pub fn update<T, F>(&self, key: &str, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        let mut cas = atomics::Cas::new(&self.inner, key).map_err(|e| self.fail(e))?;
        loop {
            let current = match cas.current().map_err(|e| self.fail(e))? {
                None => None,
                Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::msg(format!(
                        "bucket {}: the value of key {key:?} is not the JSON expected: {e}",
                        self.name
                    ))
                })?),
            };
            let new = f(current);
            match atomics::swap(cas, &serde_json::to_vec(&new)?) {
                Ok(()) => return Ok(new),
                Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
                Err(atomics::CasError::StoreError(e)) => return Err(self.fail(e)),
            }
        }
    }

    /// The values of `keys`, in order, as raw bytes.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let values = app.kv("state")?.get_many(&["a".to_string(), "b".to_string()])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let found = batch::get_many(&self.inner, keys).map_err(|e| self.fail(e))?;
        Ok(found
            .into_iter()
            .map(|pair| pair.map(|(_, value)| value))
            .collect())
    }

    /// Sets every pair, all or none.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.kv("state")?.set_many(&[("a".to_string(), b"1".to_vec()), ("b".to_string(), b"2".to_vec())])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        batch::set_many(&self.inner, pairs).map_err(|e| self.fail(e))
    }

    /// Removes every key, all or none.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.kv("state")?.delete_many(&["a".to_string(), "b".to_string()])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn delete_many(&self, keys: &[String]) -> Result<()> {
        batch::delete_many(&self.inner, keys).map_err(|e| self.fail(e))
    }
}
