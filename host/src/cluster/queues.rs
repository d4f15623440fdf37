//! Queues whose limits hold across the cluster: a queue is the cluster's,
//! so its `concurrency`, `per_key`, `rate` and `key_rate` bound every
//! host's tasks together, not each host's apart.
//!
//! Each host keeps ordering its own waiting tasks (priorities, fairness
//! between keys, delays, dedupe: `queues::dispatch`) under the queue's
//! limits; a task given its turn there then takes its share of the
//! cluster's before it runs ([`Shared::hold`]):
//! - a slot of the queue (`concurrency`) and of its key (`per_key`): the
//!   JetStream KV bucket `{name}-queue-slots` holds, per queue (`c.{queue}`)
//!   and per queue and key (`k.{queue}.{key}`), which tasks each host runs
//!   and has waiting, each by a token of its own ([`Slots`]); a host takes one by a compare-and-swap
//!   on the entry's revision only while the sum is under the limit and it
//!   is its turn (a freed slot goes round the hosts that wait, so one
//!   host's backlog holds back no other's), and gives it back the same way
//!   when its task ends (an entry no host holds or waits for is deleted,
//!   so the bucket holds only what runs and waits);
//! - a start of the queue's and its key's rate: `{name}-queue-rates` holds
//!   each rate's theoretical arrival time (a generic cell rate, as on one
//!   host, in Unix microseconds: the hosts' clocks must agree, as for
//!   durable tasks' leases), moved on by a compare-and-swap per start.
//!
//! A task that finds a slot full waits (still `queued`, counted as
//! `blocked` in `taskhost queues`) until the bucket changes (every host
//! watches it) and tries again; a spent rate says how long to wait. A host
//! that dies holding slots has them freed by the others once it has been
//! silent past the heartbeat expiry twice in a row; a host that starts
//! frees what an earlier run of it left, and one that stops frees its own.
//! Every key of the buckets is a queue and key in base64url, so any text
//! is a valid key.

use super::members::{EXPIRY, Members};
use crate::config::{ClusterConfig, QueueConfig, Rate};
use crate::queues::Shared;
use crate::storage::tasks::TaskStoreFuture;
use crate::storage::{DeadLetter, QueueStore, StoredLetter};
use crate::worker::TaskEnv;
use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a rate's arrival time is kept after its last start: an entry
/// gone is a rate at rest, which is right once its time has passed, that
/// is within `burst` intervals of its last start. A rate whose burst spans
/// longer (a burst of 10 at `1/d`) may allow a start early after this long
/// without any.
const RATE_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a task waits for a slot before it looks again without being
/// told of a change (a change missed while the watch was re-opened).
const RECHECK: Duration = EXPIRY;

/// Delete markers kept to purge: past it, the oldest are left in the
/// stream (a bounded list, a marker left is only space).
const MARKERS: usize = 100_000;

/// Changes of the slots kept for the waiting tasks to read: one that falls
/// behind further tries again at once.
const CHANGES: usize = 1024;

/// How long a host waits before it asks NATS again when it could not.
const RETRY: Duration = Duration::from_secs(1);

/// One slot entry: a queue's, or one key's of it. The one serde type of
/// its value. Tasks are named by a token of their own, so each change is
/// idempotent: a write whose answer was lost (a timeout after it landed)
/// and is made again changes nothing more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Slots {
    /// The tasks holding one of its slots (running), by host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    holders: BTreeMap<String, BTreeSet<u64>>,
    /// The tasks waiting for one, by host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    waiting: BTreeMap<String, BTreeSet<u64>>,
    /// The host that took one last: a freed slot goes to the next host
    /// after it (in name order, round) that has tasks waiting, so one
    /// host's backlog does not hold back another's few.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<String>,
}

impl Slots {
    /// The entry's value; an unreadable one is an error, never taken for
    /// an empty entry (writing over it would drop the others' counts).
    fn read(entry: &str, value: &[u8]) -> Result<Slots, String> {
        serde_json::from_slice(value)
            .map_err(|error| format!("the queue slot entry {entry} is unreadable: {error}"))
    }

    fn taken(&self) -> u64 {
        self.holders.values().map(|tasks| tasks.len() as u64).sum()
    }

    fn has(map: &BTreeMap<String, BTreeSet<u64>>, host: &str, token: u64) -> bool {
        map.get(host).is_some_and(|tasks| tasks.contains(&token))
    }

    fn add(map: &mut BTreeMap<String, BTreeSet<u64>>, host: &str, token: u64) {
        map.entry(host.to_string()).or_default().insert(token);
    }

    fn remove(map: &mut BTreeMap<String, BTreeSet<u64>>, host: &str, token: u64) {
        if let Some(tasks) = map.get_mut(host) {
            tasks.remove(&token);
            if tasks.is_empty() {
                map.remove(host);
            }
        }
    }

    /// Whether a slot freed now is `host`'s to take: no other host waits,
    /// or `host` comes first after `last` among the hosts that wait.
    fn turn_of(&self, host: &str) -> bool {
        let mut hosts: Vec<&str> = self
            .waiting
            .keys()
            .map(String::as_str)
            .filter(|waiting| *waiting != host)
            .collect();
        if hosts.is_empty() {
            return true;
        }
        hosts.push(host);
        hosts.sort_unstable();
        let next = match &self.last {
            Some(last) => hosts.iter().find(|h| **h > last.as_str()).or(hosts.first()),
            None => hosts.first(),
        };
        next == Some(&host)
    }

    fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiting.is_empty()
    }
}

/// What [`SharedQueues::take`] did.
enum Take {
    /// A slot is this task's.
    Taken,
    /// None for it now: it is counted as waiting in the entry.
    Wait,
}

/// This host's side of the cluster's queue limits.
pub struct SharedQueues {
    client: async_nats::Client,
    slots: kv::Store,
    rates: kv::Store,
    host: String,
    /// The key of every change of `slots` (a slot freed on any host): a
    /// waiting task wakes for the entry it waits on only.
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
    /// The next token of a task of this process (from the clock at
    /// start, so an earlier run's tokens are not this one's).
    next_token: std::sync::atomic::AtomicU64,
    /// The hosts the slot entries named, as the watch saw them: the sweep
    /// reads the bucket only when one of them is gone, not every period.
    named: std::sync::Mutex<HashSet<String>>,
    /// Entries this host deleted (no task holds or waits there), until
    /// the watch shows the delete's marker.
    deleted: std::sync::Mutex<HashSet<String>>,
    /// The markers of those deletes (entry, revision), to purge from the
    /// stream ([`SharedQueues::purge_markers`]); at most [`MARKERS`].
    markers: std::sync::Mutex<Vec<(String, u64)>>,
}

/// What keeps a task from starting now.
enum Wait {
    /// The slot entry it needs is full: until that entry changes.
    Slot(String),
    /// A rate is spent: this long.
    Rate(Duration),
}

/// A task's share of the cluster's limits: its slots, given back when it
/// is dropped.
struct Held {
    queues: Arc<SharedQueues>,
    token: u64,
    slots: Vec<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        if slots.is_empty() {
            return;
        }
        self.queues.give_back_later(slots, self.token);
    }
}

/// The entries a waiting task may be named in (waiting there, or a write
/// of it whose answer was lost) but holds no slot of, so given back when
/// it stops trying (dropped).
struct Registered {
    queues: Arc<SharedQueues>,
    token: u64,
    entries: HashSet<String>,
}

impl Registered {
    /// Takes a slot of `entry` for this task, as [`SharedQueues::take`].
    async fn take(&mut self, entry: &str, limit: u32) -> Result<Take, String> {
        // Named before the write: whatever becomes of it, it is given back.
        self.entries.insert(entry.to_string());
        let outcome = self.queues.take(entry, limit, self.token).await;
        if let Ok(Take::Taken) = outcome {
            // Its `Held` gives it back from now on.
            self.entries.remove(entry);
        }
        outcome
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let entries: Vec<String> = self.entries.drain().collect();
        if !entries.is_empty() {
            self.queues.give_back_later(entries, self.token);
        }
    }
}

fn encode(text: &str) -> String {
    // The empty text is `_`: no base64 of one is, and a KV key token may
    // not be empty.
    if text.is_empty() {
        "_".into()
    } else {
        URL_SAFE_NO_PAD.encode(text)
    }
}

/// The slot entry of `queue`'s concurrency.
fn queue_slot(queue: &str) -> String {
    format!("c.{}", encode(queue))
}

/// The slot entry (or rate entry) of `key` in `queue`.
fn key_entry(queue: &str, key: &str) -> String {
    format!("k.{}.{}", encode(queue), encode(key))
}

/// The rate entry of `queue`.
fn queue_rate(queue: &str) -> String {
    format!("q.{}", encode(queue))
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// Writes `value` at `entry` if the entry is still at `revision` (none:
/// if it has no value): a compare-and-swap, which [`raced`] tells lost.
async fn write_at(
    store: &kv::Store,
    entry: &str,
    value: bytes::Bytes,
    revision: Option<u64>,
) -> Result<(), WriteError> {
    match revision {
        Some(revision) => Ok(store.update(entry, value, revision).await.map(drop)?),
        None => Ok(store.create(entry, value).await.map(drop)?),
    }
}

/// Why a compare-and-swap write of an entry failed, by the error's kind
/// (not its text, which NATS may word otherwise).
enum WriteError {
    /// The entry changed since it was read (another host wrote it
    /// first): read again and retry.
    Raced,
    /// Anything else, as NATS said it.
    Failed(String),
}

impl From<kv::UpdateError> for WriteError {
    fn from(error: kv::UpdateError) -> WriteError {
        match error.kind() {
            kv::UpdateErrorKind::WrongLastRevision => WriteError::Raced,
            _ => WriteError::Failed(error.to_string()),
        }
    }
}

impl From<kv::CreateError> for WriteError {
    fn from(error: kv::CreateError) -> WriteError {
        match error.kind() {
            kv::CreateErrorKind::AlreadyExists => WriteError::Raced,
            _ => WriteError::Failed(error.to_string()),
        }
    }
}

impl SharedQueues {
    pub(super) async fn open(
        client: &async_nats::Client,
        config: &ClusterConfig,
    ) -> Result<SharedQueues> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let slots = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}-queue-slots", config.name),
                description: "taskhost: the running tasks of each queue and key, per host".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .context("cannot open the JetStream KV bucket of queue slots")?;
        let rates = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}-queue-rates", config.name),
                description: "taskhost: each queue's and key's rate, as its next arrival time"
                    .into(),
                history: 1,
                max_age: RATE_MEMORY,
                ..Default::default()
            })
            .await
            .context("cannot open the JetStream KV bucket of queue rates")?;
        let queues = SharedQueues {
            client: client.clone(),
            slots,
            rates,
            host: config.host.clone(),
            changes: tokio::sync::broadcast::channel(CHANGES).0,
            next_token: std::sync::atomic::AtomicU64::new(unix_micros()),
            named: Default::default(),
            deleted: Default::default(),
            markers: Default::default(),
        };
        // An earlier run of this host died holding slots, and came back
        // before the others freed them: no task of this process holds them.
        queues.free_hosts(|host| host == queues.host).await;
        Ok(queues)
    }

    /// Takes a slot of `entry` for the task `token` if fewer than `limit`
    /// are taken across the cluster and it is this host's turn; otherwise
    /// names the task as waiting in the entry.
    async fn take(&self, entry: &str, limit: u32, token: u64) -> Result<Take, String> {
        loop {
            let current = self.slots.entry(entry).await.map_err(|e| e.to_string())?;
            let (mut slots, revision) = match current {
                Some(current) if current.operation == kv::Operation::Put => {
                    (Slots::read(entry, &current.value)?, Some(current.revision))
                }
                Some(current) => (Slots::default(), Some(current.revision)),
                None => (Slots::default(), None),
            };
            // A take of it landed, its answer lost.
            if Slots::has(&slots.holders, &self.host, token) {
                return Ok(Take::Taken);
            }
            let take = slots.taken() < u64::from(limit) && slots.turn_of(&self.host);
            if take {
                Slots::add(&mut slots.holders, &self.host, token);
                Slots::remove(&mut slots.waiting, &self.host, token);
                slots.last = Some(self.host.clone());
            } else if Slots::has(&slots.waiting, &self.host, token) {
                return Ok(Take::Wait);
            } else {
                Slots::add(&mut slots.waiting, &self.host, token);
            }
            let value = serde_json::to_vec(&slots).unwrap_or_default().into();
            let written = write_at(&self.slots, entry, value, revision).await;
            match written {
                Ok(()) if take => return Ok(Take::Taken),
                Ok(()) => return Ok(Take::Wait),
                Err(WriteError::Raced) => continue,
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
    }

    /// Takes the task `token` out of `entry` (its slot, or its place among
    /// the waiting), retrying until NATS takes it (a slot never given back
    /// would shrink the limit for good while this host lives, and a task
    /// left waiting would hold the other hosts back).
    async fn give_back(&self, entry: &str, token: u64) {
        let without = |slots: &mut Slots, host: &str| {
            Slots::remove(&mut slots.holders, host, token);
            Slots::remove(&mut slots.waiting, host, token);
        };
        while let Err(error) = self.remove(entry, without).await {
            tracing::debug!("cannot give back the queue slot {entry}: {error}");
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Changes `entry` with `change` (given this host's name) by
    /// compare-and-swap, deleting it once no host holds or waits for a
    /// slot.
    async fn remove(&self, entry: &str, change: impl Fn(&mut Slots, &str)) -> Result<(), String> {
        loop {
            let Some(current) = self.slots.entry(entry).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if current.operation != kv::Operation::Put {
                return Ok(());
            }
            let mut slots = Slots::read(entry, &current.value)?;
            let before = slots.clone();
            change(&mut slots, &self.host);
            if slots == before {
                return Ok(());
            }
            let written = if slots.is_empty() {
                lock(&self.deleted).insert(entry.to_string());
                let deleted = self
                    .slots
                    .delete_expect_revision(entry, Some(current.revision))
                    .await
                    .map_err(WriteError::from);
                if deleted.is_err() {
                    lock(&self.deleted).remove(entry);
                }
                deleted
            } else {
                let value = serde_json::to_vec(&slots).unwrap_or_default().into();
                self.slots
                    .update(entry, value, current.revision)
                    .await
                    .map(drop)
                    .map_err(WriteError::from)
            };
            match written {
                Ok(()) => return Ok(()),
                Err(WriteError::Raced) => continue,
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
    }

    /// Takes the task `token` out of `entries`, in a task of its own (from
    /// a drop).
    fn give_back_later(self: &Arc<Self>, entries: Vec<String>, token: u64) {
        let queues = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for entry in entries {
                    queues.give_back(&entry, token).await;
                }
            });
        }
    }

    /// Takes one start of `rate` at `entry`, or says how long until one
    /// is allowed.
    async fn start(&self, entry: &str, rate: Rate) -> Result<Option<Duration>, String> {
        let interval = (rate.interval().as_micros() as u64).max(1);
        let tolerance = interval.saturating_mul(u64::from(rate.burst.saturating_sub(1)));
        loop {
            let current = self.rates.entry(entry).await.map_err(|e| e.to_string())?;
            let (arrival, revision) = match current {
                Some(current) if current.operation == kv::Operation::Put => (
                    std::str::from_utf8(&current.value)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok())
                        .unwrap_or(0),
                    Some(current.revision),
                ),
                Some(current) => (0, Some(current.revision)),
                None => (0, None),
            };
            let now = unix_micros();
            let arrival = arrival.max(now);
            if arrival - now > tolerance {
                return Ok(Some(Duration::from_micros(arrival - now - tolerance)));
            }
            let value = (arrival + interval).to_string().into_bytes().into();
            let written = write_at(&self.rates, entry, value, revision).await;
            match written {
                Ok(()) => return Ok(None),
                Err(WriteError::Raced) => continue,
                Err(WriteError::Failed(error)) => return Err(error),
            }
        }
    }

    /// One try at every limit of `config` for a task of `key`: the slots
    /// taken, or what to wait for (nothing kept).
    async fn try_hold(
        self: &Arc<Self>,
        config: &QueueConfig,
        key: &str,
        registered: &mut Registered,
    ) -> Result<Result<Held, Wait>, String> {
        let mut held = Held {
            queues: self.clone(),
            token: registered.token,
            slots: Vec::new(),
        };
        let queue = config.name.as_str();
        if let Some(limit) = config.concurrency {
            let entry = queue_slot(queue);
            if let Take::Wait = registered.take(&entry, limit).await? {
                return Ok(Err(Wait::Slot(entry)));
            }
            held.slots.push(entry);
        }
        if let Some(limit) = config.per_key {
            let entry = key_entry(queue, key);
            if let Take::Wait = registered.take(&entry, limit).await? {
                return Ok(Err(Wait::Slot(entry)));
            }
            held.slots.push(entry);
        }
        // The key's rate first: a start of the queue's rate taken for a
        // task whose key's rate then says "wait" is a start lost, and the
        // key's is the more often spent.
        if let Some(rate) = config.key_rate
            && let Some(wait) = self.start(&key_entry(queue, key), rate).await?
        {
            return Ok(Err(Wait::Rate(wait)));
        }
        if let Some(rate) = config.rate
            && let Some(wait) = self.start(&queue_rate(queue), rate).await?
        {
            return Ok(Err(Wait::Rate(wait)));
        }
        Ok(Ok(held))
    }

    /// Waits until the task may start and holds its share; gives up
    /// (holding nothing) once `wanted` is closed.
    async fn hold_until(
        self: Arc<Self>,
        config: Arc<QueueConfig>,
        key: Arc<str>,
        mut wanted: tokio::sync::oneshot::Sender<Held>,
    ) {
        let mut warned = false;
        let mut registered = Registered {
            queues: self.clone(),
            token: self
                .next_token
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            entries: HashSet::new(),
        };
        // Subscribed before the first try, so no change after it is missed.
        let mut changes = self.changes.subscribe();
        loop {
            if wanted.is_closed() {
                return;
            }
            let outcome = if super::online(&self.client) {
                self.try_hold(&config, &key, &mut registered).await
            } else {
                Err("NATS is unreachable now (see /health)".into())
            };
            match outcome {
                Ok(Ok(held)) => {
                    // Dropped (slots given back) if no one waits any more.
                    let _ = wanted.send(held);
                    return;
                }
                Ok(Err(Wait::Slot(entry))) => {
                    // Only a change of that entry can let it in: its own
                    // writes to others (a slot taken then given back) do
                    // not wake it.
                    let changed = async {
                        loop {
                            match changes.recv().await {
                                Ok(key) if key.is_empty() || *key == *entry => return,
                                Ok(_) => {}
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                    std::future::pending::<()>().await
                                }
                            }
                        }
                    };
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(RECHECK) => {}
                        () = wanted.closed() => return,
                    }
                }
                Ok(Err(Wait::Rate(wait))) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = wanted.closed() => return,
                    }
                }
                Err(error) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(
                            queue = config.name,
                            "a task of queue `{}` waits: cannot take its share of the \
                             cluster's limits ({error}); retrying",
                            config.name
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = wanted.closed() => return,
                    }
                }
            }
        }
    }

    /// Takes every host `gone` says out of the slot entries.
    async fn free_hosts(&self, gone: impl Fn(&str) -> bool) -> Vec<String> {
        let mut freed = Vec::new();
        let Ok(mut keys) = self.slots.keys().await else {
            return freed;
        };
        let mut entries = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            entries.push(key);
        }
        for entry in entries {
            let removed = std::sync::Mutex::new(Vec::new());
            let result = self
                .remove(&entry, |slots, _| {
                    let leaving: Vec<String> = slots
                        .holders
                        .keys()
                        .chain(slots.waiting.keys())
                        .filter(|h| gone(h))
                        .cloned()
                        .collect();
                    for host in &leaving {
                        slots.holders.remove(host);
                        slots.waiting.remove(host);
                    }
                    *removed.lock().unwrap_or_else(|e| e.into_inner()) = leaving;
                })
                .await;
            if result.is_ok() {
                freed.extend(removed.into_inner().unwrap_or_else(|e| e.into_inner()));
            }
        }
        freed
    }

    /// Removes from the stream the markers this host's deletes left: a
    /// KV delete keeps one per key for good, and keys come and go (one
    /// per customer), so without this the bucket, and every host's watch
    /// of it at start, would grow with every key ever used. Each purge
    /// takes the entry's messages up to its marker only: a write made
    /// since stays.
    async fn purge_markers(&self) {
        let markers = std::mem::take(&mut *lock(&self.markers));
        for (entry, revision) in markers {
            let purged = self
                .slots
                .stream
                .purge()
                .filter(format!("{}{entry}", self.slots.prefix))
                .sequence(revision + 1)
                .await;
            if let Err(error) = purged {
                tracing::debug!("cannot purge the queue slot marker of {entry}: {error}");
            }
        }
    }

    /// Frees this host's slots (it is leaving: its tasks have ended).
    pub async fn free_mine(&self) {
        let host = self.host.clone();
        self.free_hosts(|holder| holder == host).await;
    }
}

impl Shared for Arc<SharedQueues> {
    fn hold(
        &self,
        config: Arc<QueueConfig>,
        key: Arc<str>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Box<dyn Send + Sync>> + Send>> {
        // Taken in a task of its own, so a slot written as the waiting task
        // is cancelled is given back rather than lost with its future.
        let (wanted, given) = tokio::sync::oneshot::channel();
        tokio::spawn(self.clone().hold_until(config, key, wanted));
        Box::pin(async move {
            match given.await {
                Ok(held) => Box::new(held) as Box<dyn Send + Sync>,
                // The holding task ended without a share: only when the
                // runtime stops, and then nothing runs anyway.
                Err(_) => std::future::pending().await,
            }
        })
    }
}

/// Queues' run-time settings (an operator's pause, drain and limits) on
/// the JetStream KV bucket `{name}-queue-settings`, one entry per queue
/// (its name in base64url), so a change made through any host holds on
/// every host ([`follow_settings`]) and for hosts that start later; dead
/// letters stay in each host's own store, with the tasks that failed
/// there.
pub struct ClusterQueueStore {
    settings: kv::Store,
    local: Arc<dyn QueueStore>,
}

impl ClusterQueueStore {
    /// Opens the settings bucket.
    pub(super) async fn open(
        client: &async_nats::Client,
        config: &ClusterConfig,
    ) -> Result<kv::Store> {
        async_nats::jetstream::new(client.clone())
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}-queue-settings", config.name),
                description: "taskhost: queues' run-time settings, for every host".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .context("cannot open the JetStream KV bucket of queue settings")
    }

    /// Settings in `settings`, dead letters in `local`.
    pub(super) fn new(settings: kv::Store, local: Arc<dyn QueueStore>) -> ClusterQueueStore {
        ClusterQueueStore { settings, local }
    }
}

/// A queue's name from its settings entry's key.
fn decode(key: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(key)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

impl QueueStore for ClusterQueueStore {
    fn queue_settings(&self) -> TaskStoreFuture<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let mut keys = self
                .settings
                .keys()
                .await
                .context("cannot list the queues' settings on NATS")?;
            let mut found = Vec::new();
            while let Some(key) = keys.next().await {
                found.push(key.context("cannot list the queues' settings on NATS")?);
            }
            let mut all = Vec::new();
            for key in found {
                let value = self
                    .settings
                    .get(key.clone())
                    .await
                    .context("cannot read a queue's settings on NATS")?;
                if let (Some(name), Some(value)) = (decode(&key), value) {
                    all.push((name, String::from_utf8_lossy(&value).into_owned()));
                }
            }
            Ok(all)
        })
    }

    fn set_queue_settings<'a>(
        &'a self,
        name: &'a str,
        settings: Option<&'a str>,
    ) -> TaskStoreFuture<'a, ()> {
        Box::pin(async move {
            let key = encode(name);
            match settings {
                Some(json) => self
                    .settings
                    .put(key, json.as_bytes().to_vec().into())
                    .await
                    .map(drop)
                    .with_context(|| format!("cannot write queue `{name}`'s settings on NATS")),
                None => self
                    .settings
                    .delete(key)
                    .await
                    .with_context(|| format!("cannot reset queue `{name}`'s settings on NATS")),
            }
        })
    }

    fn add_dead<'a>(
        &'a self,
        queue: &'a str,
        letter: &'a DeadLetter,
        keep: u64,
    ) -> TaskStoreFuture<'a, (u64, u64)> {
        self.local.add_dead(queue, letter, keep)
    }

    fn dead<'a>(
        &'a self,
        queue: Option<&'a str>,
        after: u64,
        limit: u32,
    ) -> TaskStoreFuture<'a, Vec<StoredLetter>> {
        self.local.dead(queue, after, limit)
    }

    fn dead_counts(&self) -> TaskStoreFuture<'_, Vec<(String, u64)>> {
        self.local.dead_counts()
    }

    fn dead_letter(&self, id: u64) -> TaskStoreFuture<'_, Option<StoredLetter>> {
        self.local.dead_letter(id)
    }

    fn remove_dead(&self, id: u64) -> TaskStoreFuture<'_, bool> {
        self.local.remove_dead(id)
    }
}

/// Applies every change of the queues' settings, made through any host,
/// to this host's queues: the latest value of each (read again under the
/// queues' change lock, so a change made here meanwhile and one from
/// another host end as the bucket's last), from the start of the bucket.
pub(super) fn follow_settings(settings: kv::Store, env: Arc<TaskEnv>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match settings.watch_with_history(">").await {
                Ok(mut changes) => {
                    while let Some(Ok(change)) = changes.next().await {
                        let Some(name) = decode(&change.key) else {
                            continue;
                        };
                        let Ok(queue) = env.queues.get(&name) else {
                            continue;
                        };
                        let _one_at_a_time = env.queues.changing().await;
                        let Ok(latest) = settings.get(change.key.clone()).await else {
                            continue;
                        };
                        let json = latest.map(|value| String::from_utf8_lossy(&value).into_owned());
                        let before = queue.settings();
                        match queue.apply_stored(json.as_deref()) {
                            Ok(()) if queue.settings() != before => tracing::info!(
                                queue = name,
                                settings = json.as_deref().unwrap_or("{}"),
                                "queue {name}: run-time settings now {} (set in the cluster)",
                                json.as_deref().unwrap_or("app.toml's")
                            ),
                            Ok(()) => {}
                            Err(why) => tracing::warn!(
                                queue = name,
                                "queue {name}: run-time settings set in the cluster not applied \
                                 here: {why}"
                            ),
                        }
                    }
                }
                Err(error) => tracing::debug!("queue settings watch: {error}"),
            }
            tokio::time::sleep(RETRY).await;
        }
    })
}

/// Wakes the tasks waiting for a slot whenever the slots change (on any
/// host), and every expiry period frees the slots of hosts silent past it
/// at two looks in a row (a host just started may not have been heard
/// yet at the first). The bucket is read for that only while an entry
/// the watch saw names a host that is not present.
pub(super) fn run(queues: Arc<SharedQueues>, members: Arc<Members>) -> Vec<JoinHandle<()>> {
    let watcher = {
        let queues = queues.clone();
        tokio::spawn(async move {
            loop {
                // With history: the entries there are now first, so the
                // hosts they name are known from the start.
                match queues.slots.watch_with_history(">").await {
                    Ok(mut changes) => {
                        while let Some(Ok(change)) = changes.next().await {
                            if change.operation == kv::Operation::Put
                                && let Ok(slots) = Slots::read(&change.key, &change.value)
                            {
                                queues
                                    .named
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .extend(
                                        slots.holders.into_keys().chain(slots.waiting.into_keys()),
                                    );
                            }
                            if change.operation != kv::Operation::Put
                                && lock(&queues.deleted).remove(&change.key)
                            {
                                let mut markers = lock(&queues.markers);
                                if markers.len() < MARKERS {
                                    markers.push((change.key.clone(), change.revision));
                                }
                            }
                            // None waits: no one to tell.
                            let _ = queues.changes.send(change.key.as_str().into());
                        }
                    }
                    Err(error) => tracing::debug!("queue slots watch: {error}"),
                }
                // Whatever changed while the watch was away: every waiting
                // task looks again (the empty key).
                let _ = queues.changes.send("".into());
                tokio::time::sleep(RETRY).await;
            }
        })
    };
    let sweeper = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EXPIRY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut suspects: HashSet<String> = HashSet::new();
        loop {
            ticks.tick().await;
            queues.purge_markers().await;
            if !members.settled() || !super::online(&queues.client) {
                suspects.clear();
                continue;
            }
            let present: HashSet<String> = members.present().into_iter().map(|h| h.host).collect();
            let gone: HashSet<String> = queues
                .named
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|host| !present.contains(*host))
                .cloned()
                .collect();
            if gone.is_empty() {
                suspects.clear();
                continue;
            }
            let absent = std::sync::Mutex::new(HashSet::new());
            let freed = queues
                .free_hosts(|host| {
                    if present.contains(host) {
                        return false;
                    }
                    absent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(host.to_string());
                    suspects.contains(host)
                })
                .await;
            let freed: HashSet<String> = freed.into_iter().collect();
            for host in &freed {
                tracing::info!("host {host} is gone: its queue slots are free again");
            }
            suspects = absent.into_inner().unwrap_or_else(|e| e.into_inner());
            // A gone host no entry names any more is forgotten.
            queues
                .named
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|host| !gone.contains(host) || suspects.contains(host));
        }
    });
    vec![watcher, sweeper]
}

#[cfg(test)]
mod tests {
    use super::Slots;

    fn slots(waiting: &[&str], last: Option<&str>) -> Slots {
        Slots {
            holders: Default::default(),
            waiting: waiting
                .iter()
                .map(|h| (h.to_string(), [1].into_iter().collect()))
                .collect(),
            last: last.map(str::to_string),
        }
    }

    #[test]
    fn a_freed_slot_goes_round_the_hosts_that_wait() {
        // Alone, a host takes it whatever came before.
        assert!(slots(&[], Some("a")).turn_of("a"));
        assert!(slots(&["a"], Some("a")).turn_of("a"));
        // b waits and a took the last one: b's turn, not a's again.
        assert!(!slots(&["a", "b"], Some("a")).turn_of("a"));
        assert!(slots(&["a", "b"], Some("a")).turn_of("b"));
        // A host not counted yet (its first try) gets its place in the round.
        assert!(slots(&["a"], Some("a")).turn_of("b"));
        assert!(slots(&["b"], Some("b")).turn_of("a"));
        // Round: after c comes a.
        assert!(slots(&["a", "b", "c"], Some("c")).turn_of("a"));
        assert!(slots(&["a", "c"], Some("a")).turn_of("c"));
        assert!(slots(&["a", "c"], None).turn_of("a"));
    }

    #[test]
    fn a_task_is_counted_once_however_often_its_write_is_made() {
        let mut slots = Slots::default();
        for _ in 0..2 {
            Slots::add(&mut slots.holders, "a", 7);
        }
        Slots::add(&mut slots.holders, "a", 8);
        assert_eq!(slots.taken(), 2);
        for _ in 0..2 {
            Slots::remove(&mut slots.holders, "a", 7);
        }
        assert_eq!(slots.taken(), 1, "a second give-back takes nothing more");
        Slots::remove(&mut slots.holders, "a", 8);
        assert!(slots.is_empty());
        assert!(Slots::read("c.x", b"not json").is_err());
        let written = serde_json::to_string(&Slots {
            holders: [("a".to_string(), [3].into_iter().collect())].into(),
            waiting: Default::default(),
            last: Some("a".into()),
        })
        .unwrap();
        assert_eq!(written, r#"{"holders":{"a":[3]},"last":"a"}"#);
    }

    #[test]
    fn every_queue_and_key_is_a_valid_kv_key() {
        for (queue, key) in [("q", ""), ("emails", "acme corp/ü"), ("a.b", "*>")] {
            for entry in [
                super::queue_slot(queue),
                super::key_entry(queue, key),
                super::queue_rate(queue),
            ] {
                assert!(
                    entry
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                    "{entry}"
                );
                assert!(!entry.contains("..") && !entry.ends_with('.'), "{entry}");
            }
        }
    }
}
