//! Key-value state that outlives a task's instance and the host process:
//! the storage behind `wasi:keyvalue` (see `crate::keyvalue`) and behind
//! `taskhost kv`.
//!
//! Buckets are named by [`BucketId`]. A plugin's own buckets live under its
//! name (`PLUGIN/BUCKET`), so plugin A never sees plugin B's keys; a shared
//! bucket, opened to a plugin by `[plugins.NAME.grants] kv`, has a bare
//! name. Every write is checked against [`KvLimits`] inside the same
//! transaction that makes it, so a limit holds under concurrent writers.

use crate::config::Limit;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// What a [`KvStore`] call returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// A backend for key-value state.
///
/// Every write is atomic and, once its future has returned `Ok`, durable
/// against the host process dying. Limits ([`KvLimits`]) are the backend's
/// to enforce, because only it sees every writer.
pub trait KvStore: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;

    /// The value of `key` with its version, the token [`KvStore::swap`]
    /// compares against.
    fn get_versioned<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
    ) -> KvFuture<'a, Option<Versioned>>;

    /// Sets `key` to `value`, creating the bucket on its first key.
    fn set<'a>(&'a self, bucket: &'a BucketId, key: &'a str, value: &'a [u8]) -> KvFuture<'a, ()>;

    /// Removes `key`; whether it was there.
    fn delete<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, bool>;

    /// Up to `limit` keys in byte order, starting after `after`.
    fn list_keys<'a>(
        &'a self,
        bucket: &'a BucketId,
        after: Option<&'a str>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage>;

    /// Adds `delta` to the decimal integer stored at `key` (absent counts
    /// as 0) and returns the sum, stored as decimal text (so it reads as a
    /// JSON number).
    fn increment<'a>(&'a self, bucket: &'a BucketId, key: &'a str, delta: i64)
    -> KvFuture<'a, i64>;

    /// Sets `key` to `value` only if it is still as it was when read:
    /// at `expected` version, or absent for `None`.
    fn swap<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
    ) -> KvFuture<'a, Swap>;

    /// The values of `keys`, in order.
    fn get_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        keys: &'a [String],
    ) -> KvFuture<'a, Vec<Option<Vec<u8>>>>;

    /// Sets every pair, all or none.
    fn set_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        entries: &'a [(String, Vec<u8>)],
    ) -> KvFuture<'a, ()>;

    /// Removes every key, all or none.
    fn delete_many<'a>(&'a self, bucket: &'a BucketId, keys: &'a [String]) -> KvFuture<'a, ()>;

    /// Every bucket that holds a key, by name.
    fn buckets(&self) -> KvFuture<'_, Vec<BucketStats>>;

    /// Whether [`KvStore::write_journaled`] makes a write and its journal
    /// steps in one transaction. Without it, a resuming task's write is
    /// made, then its step appended (a crash between the two makes it
    /// again on replay).
    fn journals_writes(&self) -> bool {
        false
    }

    /// Makes `write` and appends `steps` to task `steps.seq`'s journal in
    /// one transaction: a crash keeps both or neither, so a resumed task
    /// never makes a write twice. The write's own step gets the outcome
    /// `encode` makes of its answer; past `steps.room`, both are undone.
    /// Only called where [`KvStore::journals_writes`].
    fn write_journaled<'a>(
        &'a self,
        bucket: &'a BucketId,
        write: KvWrite,
        steps: super::journal::StepsToAppend,
        encode: EncodeAnswer,
    ) -> KvFuture<'a, Journaled> {
        let _ = (bucket, write, steps, encode);
        Box::pin(async {
            Err(KvError::Storage(
                "this store does not journal writes".into(),
            ))
        })
    }
}

/// A write a resuming task makes ([`KvStore::write_journaled`]).
#[derive(Debug, Clone)]
pub enum KvWrite {
    /// `set`.
    Set {
        /// The key.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// `delete`.
    Delete {
        /// The key.
        key: String,
    },
    /// `increment`.
    Increment {
        /// The key.
        key: String,
        /// What is added.
        delta: i64,
    },
    /// `set-many`: every pair, all or none.
    SetMany(Vec<(String, Vec<u8>)>),
    /// `delete-many`: every key, all or none.
    DeleteMany(Vec<String>),
}

/// What a [`KvWrite`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KvWritten {
    /// A set, a delete or a batch.
    Done,
    /// An increment's new value.
    Sum(i64),
}

/// How a write's answer is kept as its journal step's outcome.
pub type EncodeAnswer = Box<dyn FnOnce(&Result<KvWritten, KvError>) -> Vec<u8> + Send>;

/// How [`KvStore::write_journaled`] went: the write's answer, and the
/// size of its step's outcome, or none when it did not fit the journal's
/// room (then nothing was written).
#[derive(Debug)]
pub struct Journaled {
    /// The write's answer.
    pub answer: Result<KvWritten, KvError>,
    /// Its step's outcome's size; none: it did not fit, nothing written.
    pub outcome_bytes: Option<usize>,
}

/// A value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value's bytes, as stored.
    pub value: Vec<u8>,
    /// Changes on every write of the key; never reused within a store.
    pub version: u64,
}

/// How a [`KvStore::swap`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The value was written: the key was still at the expected version.
    Done,
    /// The key changed since it was read: its version now (`None`: absent).
    Changed(Option<u64>),
}

/// One page of a bucket's keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    /// Up to the page's `limit` keys, in byte order.
    pub keys: Vec<String>,
    /// Where the next page starts; none after the last.
    pub next: Option<String>,
}

/// What a bucket holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketStats {
    /// `PLUGIN/NAME` or a shared `NAME`.
    pub bucket: BucketId,
    /// How many keys it holds (at least 1: an empty bucket is not listed).
    pub keys: u64,
    /// Keys and values together.
    pub bytes: u64,
}

/// The bounds every write is checked against (`[limits] kv_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// `kv_key_bytes`: the longest key, in bytes.
    pub key_bytes: usize,
    /// `kv_value_bytes`: the largest value, in bytes.
    pub value_bytes: usize,
    /// `kv_keys_per_bucket`: the most keys one bucket holds.
    pub keys_per_bucket: u64,
    /// Keys and values of all of one plugin's own buckets; a shared bucket
    /// counts on its own.
    pub bytes_per_plugin: u64,
}

/// Why a key-value call failed. Callers branch on it: a guest gets a
/// `limit` for [`KvError::Limit`], the control API a 413.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A `[limits] kv_*` bound: the key, the value, the bucket's keys or the
    /// plugin's bytes.
    #[error(transparent)]
    Limit(#[from] Limit),
    /// `increment` of a value that is not a decimal integer; it is left as
    /// it was.
    #[error("the value of key {key:?} is not a decimal integer, so it cannot be incremented")]
    NotAnInteger {
        /// The key `increment` was asked to add to.
        key: String,
    },
    /// `increment` past the range of a 64-bit integer.
    #[error("incrementing key {key:?} by {delta} would overflow a 64-bit integer")]
    Overflow {
        /// The key `increment` was asked to add to.
        key: String,
        /// What was to be added; the stored value is left as it was.
        delta: i64,
    },
    /// An empty key: refused by every call that names one.
    #[error("a key must not be empty")]
    EmptyKey,
    /// The backend failed (disk full, a corrupt file): the message names it.
    #[error("{0}")]
    Storage(String),
}

/// A bucket: a plugin's own (`PLUGIN/NAME`) or a shared one (`NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketId {
    owner: Option<String>,
    name: String,
}

impl BucketId {
    /// `name` of plugin `owner`, only it can open.
    pub fn private(owner: &str, name: &str) -> Result<BucketId, BadBucket> {
        check_bucket_name(name)?;
        Ok(BucketId {
            owner: Some(owner.to_string()),
            name: name.to_string(),
        })
    }

    /// The shared bucket `name`, open to the plugins granted it.
    pub fn shared(name: &str) -> Result<BucketId, BadBucket> {
        check_bucket_name(name)?;
        Ok(BucketId {
            owner: None,
            name: name.to_string(),
        })
    }

    /// What an operator types: `PLUGIN/NAME` or `NAME`. Bucket names hold
    /// no `/`, so the last one splits the plugin from the bucket.
    pub fn parse(text: &str) -> Result<BucketId, BadBucket> {
        match text.rsplit_once('/') {
            Some((owner, name)) if !owner.is_empty() => BucketId::private(owner, name),
            Some(_) => Err(BadBucket(format!(
                "bucket {text:?} names no plugin before its `/`"
            ))),
            None => BucketId::shared(text),
        }
    }

    /// The plugin whose own bucket it is; none for a shared bucket.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The bucket's name, without its plugin.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for BucketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.owner {
            Some(owner) => write!(f, "{owner}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A bucket name that cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadBucket(pub String);

fn check_bucket_name(name: &str) -> Result<(), BadBucket> {
    crate::config::check_bucket_name(name).map_err(BadBucket)
}

impl KvLimits {
    /// A key may be written: not empty, within `kv_key_bytes`.
    pub fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.key_bytes {
            return Err(Limit {
                what: "a key".to_string(),
                max: self.key_bytes as u64,
                got: key.len() as u64,
                unit: crate::config::LimitUnit::Bytes,
                setting: Some("kv_key_bytes"),
            }
            .into());
        }
        Ok(())
    }

    /// `key` may be set to `value`: the key fits, and the value is within
    /// `kv_value_bytes`.
    pub fn check_write(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.value_bytes {
            return Err(Limit {
                what: format!("the value of key {key:?}"),
                max: self.value_bytes as u64,
                got: value.len() as u64,
                unit: crate::config::LimitUnit::Bytes,
                setting: Some("kv_value_bytes"),
            }
            .into());
        }
        Ok(())
    }
}

impl From<&crate::config::Limits> for KvLimits {
    fn from(limits: &crate::config::Limits) -> KvLimits {
        KvLimits {
            key_bytes: limits.kv_key_bytes,
            value_bytes: limits.kv_value_bytes,
            keys_per_bucket: limits.kv_keys_per_bucket,
            bytes_per_plugin: limits.kv_bytes_per_plugin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_ids_round_trip_through_their_text() {
        let own = BucketId::private("my/plugin", "counters").unwrap();
        assert_eq!(own.to_string(), "my/plugin/counters");
        assert_eq!(BucketId::parse("my/plugin/counters").unwrap(), own);
        let shared = BucketId::parse("feeds").unwrap();
        assert_eq!(shared.owner(), None);
        assert_eq!(shared.to_string(), "feeds");
    }

    #[test]
    fn bad_bucket_names_are_refused_with_the_rule() {
        for bad in ["", ".hidden", "a b", "é", "/x", &"x".repeat(65)] {
            let err = BucketId::parse(bad).unwrap_err();
            assert!(err.0.contains("bucket"), "{bad:?}: {err}");
        }
    }
}
