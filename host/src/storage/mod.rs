//! What outlives a task's instance and the host process, in one embedded
//! database: key-value state ([`KvStore`]: `wasi:keyvalue`, `taskhost kv`),
//! durable tasks ([`TaskStore`]: `durable = true`, run again after a
//! crash), schedules' progress ([`ScheduleStore`]: `catch_up`, pauses,
//! schedules guests added) and queues' state ([`QueueStore`]: settings
//! changed at run time, dead letters).
//!
//! [`Storage`] is the seam between the host and its backends: a value of
//! four handles, one per trait, given to the host when it launches. Each
//! part of the host uses only the handle it needs, and each handle may
//! have its own backend: on one host all four are an SQLite file
//! ([`SqliteStore`]); in a cluster key-value state and durable tasks are
//! on JetStream, and so are queues' settings (dead letters stay in the
//! file, as does schedules' progress). Their calls
//! return futures: SQLite's run on the store's own thread, so a lock held
//! from outside stalls only the tasks that wait for storage, never their
//! workers' other tasks.
//!
//! What every backend must do is one test suite, [`contract`], which the
//! SQLite backend runs in its unit tests and the JetStream one in the
//! cluster's tests.
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

pub mod contract;
pub mod journal;
pub mod kv;
pub mod queues;
pub mod schedules;
mod sqlite;
pub mod tasks;

pub use kv::{
    BadBucket, BucketId, BucketStats, KeyPage, KvError, KvFuture, KvLimits, KvStore, Swap,
    Versioned,
};
pub use queues::{DeadLetter, QueueStore, StoredLetter};
pub use schedules::{ScheduleMark, ScheduleStore};
pub use sqlite::{DATABASE_FILE, SqliteStore, StorageMetrics, StoreOptions};
use std::sync::Arc;
pub use tasks::Queued;

pub use journal::{JournalStep, NoJournals, StepsToAppend};
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

/// Everything the host keeps: key-value state, durable tasks and
/// schedules' progress, each behind its own handle. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    kv: Arc<dyn KvStore>,
    tasks: Arc<dyn TaskStore>,
    schedules: Arc<dyn ScheduleStore>,
    queues: Arc<dyn QueueStore>,
}

impl Storage {
    /// Storage over the backends given; [`Storage::sqlite`] puts them all
    /// in one file.
    pub fn new(
        kv: Arc<dyn KvStore>,
        tasks: Arc<dyn TaskStore>,
        schedules: Arc<dyn ScheduleStore>,
        queues: Arc<dyn QueueStore>,
    ) -> Storage {
        Storage {
            kv,
            tasks,
            schedules,
            queues,
        }
    }

    /// All of them in one SQLite store.
    pub fn sqlite(store: SqliteStore) -> Storage {
        let store = Arc::new(store);
        Storage::new(store.clone(), store.clone(), store.clone(), store)
    }

    /// Key-value state (`wasi:keyvalue`, `taskhost kv`).
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    /// Durable tasks' records.
    pub fn tasks(&self) -> &Arc<dyn TaskStore> {
        &self.tasks
    }

    /// Schedules' progress and the schedules guests added.
    pub fn schedules(&self) -> &Arc<dyn ScheduleStore> {
        &self.schedules
    }

    /// Queues' run-time settings and dead letters.
    pub fn queues(&self) -> &Arc<dyn QueueStore> {
        &self.queues
    }

    /// This storage with `kv` and `tasks` in place of its own: a cluster's
    /// backends over a host's file.
    pub fn with(self, kv: Arc<dyn KvStore>, tasks: Arc<dyn TaskStore>) -> Storage {
        Storage { kv, tasks, ..self }
    }

    /// This storage with `queues` in place of its own: a cluster's
    /// queue settings over a host's dead letters.
    pub fn with_queues(self, queues: Arc<dyn QueueStore>) -> Storage {
        Storage { queues, ..self }
    }
}
