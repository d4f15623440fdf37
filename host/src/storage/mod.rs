//! What outlives a task's instance and the host process, in one embedded
//! database: key-value state ([`KvStore`]: `wasi:keyvalue`, `taskhost kv`),
//! durable tasks ([`TaskStore`]: `durable = true`, run again after a
//! crash) and schedules' progress ([`ScheduleStore`]: `catch_up`, pauses,
//! schedules guests added).
//!
//! [`Storage`] is the seam between the host and a backend: every part of
//! the host that keeps state holds an `Arc<dyn Storage>`. The default
//! backend is an SQLite file ([`SqliteStore`]); a clustered backend goes
//! behind the same traits. Their calls return futures: SQLite's run on
//! the store's own thread, so a lock held from outside stalls only the
//! tasks that wait for storage, never their workers' other tasks.
//!
//! # Which writes are durable
//!
//! Every write below has committed when its future returns `Ok`, and the
//! caller acknowledges only after that:
//! - a key-value write, before the guest's call returns;
//! - a durable task's record, before `add_task` (guest, API, CLI) returns;
//! - a cancel of a durable task, before the cancel is sent to the task;
//! - a durable task's outcome, before its `done`/`failed`/`cancelled` line
//!   is logged and its end is visible to waiters;
//! - a retry's attempt number, before that attempt starts;
//! - a schedule's progress after each tick, and a pause or resume before
//!   it is acknowledged; a schedule a guest adds, before `add-schedule`
//!   returns.
//!
//! "Committed" means: in the write-ahead log, so it survives the process
//! dying (`kill -9`); with `[storage] fsync = true`, also on the disk, so
//! it survives a power cut. `docs/speed.md` says what each costs.

pub mod kv;
pub mod schedules;
mod sqlite;
pub mod tasks;

pub use kv::{
    BadBucket, BucketId, BucketStats, KeyPage, KvError, KvFuture, KvLimits, KvStore, Swap,
    Versioned,
};
pub use schedules::{ScheduleMark, ScheduleStore};
pub use sqlite::{DATABASE_FILE, SqliteStore, StorageMetrics, StoreOptions};
pub use tasks::{NewTask, Submitted, TaskRecord, TaskStore, TaskStoreFuture};

/// A backend cannot be reached now (a cluster's NATS is away): nothing
/// was written, and the same call may succeed later. Backends return it
/// inside their `anyhow::Error` so callers can tell "try again" (HTTP 503)
/// from a failed write.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A submission's idempotency key names a durable task that has not ended
/// and runs on another host of the cluster: nothing was written or
/// started here. The message names the task and the host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunsElsewhere(pub String);

/// A backend for everything the host keeps: key-value state, durable
/// tasks and schedules' progress, in one place, so one backend swap moves
/// them all.
pub trait Storage: KvStore + TaskStore + ScheduleStore {}

impl<T: KvStore + TaskStore + ScheduleStore> Storage for T {}
