//! Key-value state in a cluster (`wasi:keyvalue`, `taskhost kv`) on
//! JetStream KV, so every host reads what any host wrote: a task rerun on
//! another host finds the state the first run left.
//!
//! Each bucket of `crate::storage::kv` is a JetStream KV bucket of its own,
//! `{name}-kv-{bucket in base64url}`, holding one revision per key (its
//! keys in base64url too, since a guest's key may hold any byte a subject
//! cannot). The stream behind it enforces the limits, so they hold under
//! writers on every host: at most `kv_keys_per_bucket` messages (a new key
//! past it is refused; deleting a key purges it, leaving no marker), at
//! most `kv_bytes_per_plugin` bytes as JetStream stores them (per bucket,
//! subjects and headers included). `set-many` and `delete-many` are one
//! atomic batch (nats-server 2.12+), all or none. JetStream counts every
//! message of a batch as a new one against the key limit, so a `set-many`
//! in a bucket within its size of the limit is refused even when it only
//! overwrites, and a `delete-many` there purges its keys one by one (all
//! of them, unless NATS goes away midway). A key's version is its
//! revision.

use crate::config::{ClusterConfig, Limit, LimitUnit};
use crate::storage::{
    BucketId, BucketStats, KeyPage, KvError, KvFuture, KvLimits, KvStore, Swap, Versioned,
};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Mutex;

/// One bucket: its KV handle and the stream behind it.
#[derive(Clone)]
struct Bucket {
    store: kv::Store,
    stream: stream::Stream,
    /// The JetStream bucket's name.
    name: String,
}

/// The cluster's key-value state.
pub struct ClusterKv {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// `{name}-kv-`.
    prefix: String,
    limits: KvLimits,
    buckets: Mutex<HashMap<BucketId, Bucket>>,
}

fn storage(error: impl std::fmt::Display) -> KvError {
    KvError::Storage(format!("the cluster's key-value store: {error}"))
}

fn encode(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

fn decode(text: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()
}

/// A decimal integer, as `increment` stores it.
fn parse_integer(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

impl ClusterKv {
    pub(super) fn new(
        client: &async_nats::Client,
        config: &ClusterConfig,
        limits: KvLimits,
    ) -> ClusterKv {
        ClusterKv {
            client: client.clone(),
            jetstream: jetstream::new(client.clone()),
            prefix: format!("{}-kv-", config.name),
            limits,
            buckets: Mutex::default(),
        }
    }

    fn online(&self) -> Result<(), KvError> {
        if super::online(&self.client) {
            Ok(())
        } else {
            Err(KvError::Storage(
                "NATS is unreachable, so the cluster's key-value store cannot answer now".into(),
            ))
        }
    }

    /// The bucket, opened (and made, with `create`) if need be; none when
    /// it does not exist and `create` is false.
    async fn bucket(&self, id: &BucketId, create: bool) -> Result<Option<Bucket>, KvError> {
        self.online()?;
        if let Some(bucket) = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some(bucket.clone()));
        }
        let name = format!("{}{}", self.prefix, encode(&id.to_string()));
        let store = match self.jetstream.get_key_value(&name).await {
            Ok(store) => store,
            Err(_) if !create => return Ok(None),
            Err(_) => self.create(id, &name).await?,
        };
        let stream = self
            .jetstream
            .get_stream(format!("KV_{name}"))
            .await
            .map_err(storage)?;
        let bucket = Bucket {
            store,
            stream,
            name,
        };
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), bucket.clone());
        Ok(Some(bucket))
    }

    /// Makes the bucket's stream with every setting at once (those of a
    /// JetStream KV bucket of one revision per key, plus the key limit and
    /// atomic batches), so no write lands before the limits hold; a host
    /// that lost the race to make it opens the one the winner made.
    async fn create(&self, id: &BucketId, name: &str) -> Result<kv::Store, KvError> {
        let config = stream::Config {
            name: format!("KV_{name}"),
            description: Some(format!("taskhost: key-value bucket {id}")),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_messages: i64::try_from(self.limits.keys_per_bucket).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(self.limits.bytes_per_plugin).unwrap_or(i64::MAX),
            max_message_size: i32::try_from(self.limits.value_bytes)
                .unwrap_or(i32::MAX)
                .saturating_add(4096),
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            allow_atomic_publish: true,
            ..Default::default()
        };
        if let Err(error) = self.jetstream.create_stream(config).await {
            tracing::debug!("key-value bucket {id}: {error}; opening the one made meanwhile");
        }
        self.jetstream.get_key_value(name).await.map_err(storage)
    }

    /// A write JetStream refused: a limit it enforces, or a failure.
    fn refused(&self, id: &BucketId, error: impl std::fmt::Display) -> KvError {
        let text = error.to_string();
        if text.contains("maximum messages exceeded") {
            return Limit {
                what: format!("bucket {id}"),
                max: self.limits.keys_per_bucket,
                got: self.limits.keys_per_bucket + 1,
                unit: LimitUnit::Keys,
                setting: Some("kv_keys_per_bucket"),
            }
            .into();
        }
        if text.contains("maximum bytes exceeded") {
            return Limit {
                what: format!("bucket {id} (as JetStream stores it)"),
                max: self.limits.bytes_per_plugin,
                got: self.limits.bytes_per_plugin + 1,
                unit: LimitUnit::Bytes,
                setting: Some("kv_bytes_per_plugin"),
            }
            .into();
        }
        storage(text)
    }

    async fn entry(&self, id: &BucketId, key: &str) -> Result<Option<Versioned>, KvError> {
        let Some(bucket) = self.bucket(id, false).await? else {
            return Ok(None);
        };
        let entry = bucket.store.entry(encode(key)).await.map_err(storage)?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Versioned {
                value: e.value.to_vec(),
                version: e.revision,
            }))
    }

    async fn put(&self, id: &BucketId, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.limits.check_write(key, value)?;
        let bucket = self.bucket(id, true).await?.expect("made");
        bucket
            .store
            .put(encode(key), value.to_vec().into())
            .await
            .map_err(|e| self.refused(id, e))?;
        Ok(())
    }

    async fn remove(&self, id: &BucketId, key: &str) -> Result<bool, KvError> {
        let Some(bucket) = self.bucket(id, false).await? else {
            return Ok(false);
        };
        let Some(current) = self.entry(id, key).await? else {
            return Ok(false);
        };
        // A purge of the key's subject leaves no marker behind to count
        // against the bucket's key limit; only up to the revision read, so
        // a value another host wrote since stays.
        bucket
            .stream
            .purge()
            .filter(format!("$KV.{}.{}", bucket.name, encode(key)))
            .sequence(current.version + 1)
            .await
            .map_err(storage)?;
        Ok(true)
    }

    async fn keys_of(&self, id: &BucketId) -> Result<Vec<String>, KvError> {
        let Some(bucket) = self.bucket(id, false).await? else {
            return Ok(Vec::new());
        };
        let mut keys = bucket.store.keys().await.map_err(storage)?;
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            if let Some(key) = decode(&key.map_err(storage)?) {
                found.push(key);
            }
        }
        found.sort();
        Ok(found)
    }

    async fn page(
        &self,
        id: &BucketId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        let keys = self.keys_of(id).await?;
        let mut rest: Vec<String> = keys
            .into_iter()
            .filter(|k| after.is_none_or(|after| k.as_str() > after))
            .collect();
        let more = rest.len() > limit;
        rest.truncate(limit);
        let next = if more { rest.last().cloned() } else { None };
        Ok(KeyPage { keys: rest, next })
    }

    async fn add(&self, id: &BucketId, key: &str, delta: i64) -> Result<i64, KvError> {
        loop {
            let current = self.entry(id, key).await?;
            let base = match &current {
                Some(v) => parse_integer(&v.value).ok_or_else(|| KvError::NotAnInteger {
                    key: key.to_string(),
                })?,
                None => 0,
            };
            let sum = base.checked_add(delta).ok_or_else(|| KvError::Overflow {
                key: key.to_string(),
                delta,
            })?;
            let value = sum.to_string();
            match self
                .swap_now(id, key, current.map(|v| v.version), value.as_bytes())
                .await?
            {
                Swap::Done => return Ok(sum),
                Swap::Changed(_) => continue,
            }
        }
    }

    async fn swap_now(
        &self,
        id: &BucketId,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<Swap, KvError> {
        self.limits.check_write(key, value)?;
        let bucket = self.bucket(id, true).await?.expect("made");
        let written = match expected {
            None => bucket
                .store
                .create(encode(key), value.to_vec().into())
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(self.refused(id, e)),
                }),
            Some(revision) => bucket
                .store
                .update(encode(key), value.to_vec().into(), revision)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(self.refused(id, e)),
                }),
        };
        match written {
            Ok(()) => Ok(Swap::Done),
            Err(Some(error)) => Err(error),
            Err(None) => Ok(Swap::Changed(self.entry(id, key).await?.map(|v| v.version))),
        }
    }

    /// Writes every `(key, value)` (none: delete) in one atomic batch.
    async fn batch(&self, id: &BucketId, writes: &[(&str, Option<&[u8]>)]) -> Result<(), KvError> {
        let Some(bucket) = self.bucket(id, true).await? else {
            return Ok(());
        };
        let batch = format!(
            "{:016x}",
            getrandom::u64().map_err(|e| storage(format!("no randomness for a batch id: {e}")))?
        );
        let last = writes.len();
        let mut committed = None;
        for (index, (key, value)) in writes.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch.as_str());
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            if value.is_none() {
                headers.insert("KV-Operation", "DEL");
            }
            let subject = format!("$KV.{}.{}", bucket.name, encode(key));
            let payload = value.map(|v| v.to_vec()).unwrap_or_default();
            if index + 1 < last {
                self.client
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(storage)?;
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let reply = self
                .client
                .request_with_headers(subject, headers, payload.into())
                .await
                .map_err(storage)?;
            let answer: serde_json::Value =
                serde_json::from_slice(&reply.payload).map_err(storage)?;
            if let Some(error) = answer.get("error") {
                let description = error["description"].as_str().unwrap_or("refused");
                return Err(self.refused(id, description));
            }
            committed = answer["seq"].as_u64();
        }
        // Deleted keys leave markers in a batch: purged now (up to the
        // batch's last message, so a write made since stays), so they do
        // not count against the key limit.
        if let Some(committed) = committed {
            for (key, value) in writes {
                if value.is_none() {
                    let _ = bucket
                        .stream
                        .purge()
                        .filter(format!("$KV.{}.{}", bucket.name, encode(key)))
                        .sequence(committed + 1)
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn stats(&self) -> Result<Vec<BucketStats>, KvError> {
        self.online()?;
        let mut names = self.jetstream.stream_names();
        let prefix = format!("KV_{}", self.prefix);
        let mut ids = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(storage)?;
            if let Some(encoded) = name.strip_prefix(&prefix)
                && let Some(text) = decode(encoded)
                && let Ok(id) = BucketId::parse(&text)
            {
                ids.push(id);
            }
        }
        ids.sort();
        let mut stats = Vec::new();
        for id in ids {
            let Some(bucket) = self.bucket(&id, false).await? else {
                continue;
            };
            let mut stream = bucket.stream.clone();
            let state = stream.info().await.map_err(storage)?.state.clone();
            if state.messages > 0 {
                stats.push(BucketStats {
                    bucket: id,
                    keys: state.messages,
                    bytes: state.bytes,
                });
            }
        }
        Ok(stats)
    }
}

impl KvStore for ClusterKv {
    fn get<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.entry(bucket, key).await?.map(|v| v.value)) })
    }

    fn get_versioned<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
    ) -> KvFuture<'a, Option<Versioned>> {
        Box::pin(self.entry(bucket, key))
    }

    fn set<'a>(&'a self, bucket: &'a BucketId, key: &'a str, value: &'a [u8]) -> KvFuture<'a, ()> {
        Box::pin(self.put(bucket, key, value))
    }

    fn delete<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(self.remove(bucket, key))
    }

    fn list_keys<'a>(
        &'a self,
        bucket: &'a BucketId,
        after: Option<&'a str>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage> {
        Box::pin(self.page(bucket, after, limit))
    }

    fn increment<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, i64> {
        Box::pin(self.add(bucket, key, delta))
    }

    fn swap<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
    ) -> KvFuture<'a, Swap> {
        Box::pin(self.swap_now(bucket, key, expected, value))
    }

    fn get_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        keys: &'a [String],
    ) -> KvFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.entry(bucket, key).await?.map(|v| v.value));
            }
            Ok(values)
        })
    }

    fn set_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        entries: &'a [(String, Vec<u8>)],
    ) -> KvFuture<'a, ()> {
        Box::pin(async move {
            for (key, value) in entries {
                self.limits.check_write(key, value)?;
            }
            let writes: Vec<(&str, Option<&[u8]>)> = entries
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
                .collect();
            if writes.is_empty() {
                return Ok(());
            }
            self.batch(bucket, &writes).await
        })
    }

    fn delete_many<'a>(&'a self, bucket: &'a BucketId, keys: &'a [String]) -> KvFuture<'a, ()> {
        Box::pin(async move {
            if keys.is_empty() || self.bucket(bucket, false).await?.is_none() {
                return Ok(());
            }
            let writes: Vec<(&str, Option<&[u8]>)> =
                keys.iter().map(|k| (k.as_str(), None)).collect();
            match self.batch(bucket, &writes).await {
                // JetStream counts each message of a batch as a new one
                // against the key limit, even a delete: in a full bucket
                // the keys go one purge at a time instead.
                Err(KvError::Limit(_)) => {
                    for key in keys {
                        self.remove(bucket, key).await?;
                    }
                    Ok(())
                }
                other => other,
            }
        })
    }

    fn buckets(&self) -> KvFuture<'_, Vec<BucketStats>> {
        Box::pin(self.stats())
    }
}
