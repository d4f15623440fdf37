//! The default [`Storage`](super::Storage): one SQLite database,
//! `taskhost.sqlite3` in the storage directory (`[storage] path`), through
//! rusqlite's bundled SQLite, so a fresh machine needs no library. Key-value
//! state is here; durable tasks are in `tasks`.
//!
//! Durability: write-ahead logging, and every write commits before its call
//! returns. With `synchronous = NORMAL` (the default) a commit is in the WAL
//! file, in the kernel's page cache, when the call returns: it survives the
//! host process dying, `kill -9` included, but a power cut may lose the
//! last commits. `[storage] fsync = true` makes every commit wait for the
//! disk (`synchronous = FULL`), which costs a flush per write.
//!
//! One connection behind a mutex, used by the store's own thread, which
//! runs every call in the order made (`SqliteStore::off_thread`). Durable
//! tasks' writes are committed in groups: the writes queued behind one
//! share its `BEGIN IMMEDIATE` transaction, each of more than one
//! statement under a savepoint, and all are answered after its one commit
//! (`commit_group`), so a commit's
//! WAL write is paid once for many tasks. Measured with 64 submissions in
//! flight per worker (`cargo bench -p taskhost --bench speed -- queues`):
//! about 13 writes a commit, and durable tasks/s about 1.9x of one
//! transaction each. WAL checkpoints run on a connection and thread of
//! their own (`checkpoint`), not inside the store's commits. A `lock` file keeps a second host off the same
//! directory, so versions (for compare-and-swap) can be handed out from
//! memory.

use super::journal::StepsToAppend;
use super::kv::{
    BucketId, BucketStats, EncodeAnswer, Journaled, KeyPage, KvError, KvFuture, KvLimits, KvStore,
    KvWrite, KvWritten, Swap, Versioned,
};
use crate::config::{Limit, LimitUnit};
use crate::private_files::create_private_dir;
use crate::storage::tasks::TaskStoreFuture;
use anyhow::{Context, Result, bail};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod checkpoint;
mod queues;
mod schedules;
mod tasks;

/// The database file in the storage directory.
pub const DATABASE_FILE: &str = "taskhost.sqlite3";

/// What taskhost 0.2 (key-value only) named it: renamed at open.
const LEGACY_FILE: &str = "kv.sqlite3";

/// The layout this build reads and writes (`PRAGMA user_version`): 1 had
/// key-value state only, 2 adds durable tasks, 3 schedules, 4 queues'
/// settings and dead letters, 5 where a durable task waits (`queued`), 6
/// the trace a durable task's runs join (`traceparent`), 7 journals of
/// durable tasks that resume (`resume`, `journal`), 8 the builds they
/// began on (`builds`).
const SCHEMA_VERSION: i64 = 8;

/// Values are blobs in a rowid table (SQLite keeps big blobs out of the
/// key's b-tree that way); `buckets` keeps each bucket's key and byte
/// counts, updated in the transaction of every write, so a limit check
/// costs a lookup rather than a scan.
const SCHEMA: &str = "
CREATE TABLE entries (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE buckets (
    bucket TEXT PRIMARY KEY,
    owner TEXT,
    keys INTEGER NOT NULL,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX buckets_by_owner ON buckets (owner);
";

/// Durable tasks (layout 2). `state` is `live` until the outcome is
/// recorded; ended records are found by `ended_ms` for retention.
const TASKS_SCHEMA: &str = "
CREATE TABLE durable_tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    worker TEXT NOT NULL,
    plugin TEXT NOT NULL,
    plugin_version TEXT NOT NULL,
    factory TEXT NOT NULL,
    args TEXT NOT NULL,
    retry TEXT,
    idempotency_key TEXT UNIQUE,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    cancel_stage TEXT,
    created_ms INTEGER NOT NULL,
    ended_ms INTEGER
);
CREATE INDEX durable_tasks_live ON durable_tasks (seq) WHERE state = 'live';
CREATE INDEX durable_tasks_ended ON durable_tasks (ended_ms, seq) WHERE state <> 'live';
";

/// Schedules' progress (layout 3); `spec` only for schedules added at run
/// time.
const SCHEDULES_SCHEMA: &str = "
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    seen_until_ms INTEGER,
    paused INTEGER NOT NULL DEFAULT 0,
    spec TEXT
);
";

/// Queues' run-time settings and dead letters (layout 4).
const QUEUES_SCHEMA: &str = "
CREATE TABLE queue_settings (
    name TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    letter TEXT NOT NULL
);
CREATE INDEX dead_letters_by_queue ON dead_letters (queue, id);
";

/// Where a durable task waits before it starts (layout 5): JSON of a
/// `storage::Queued`, null for a task that was not queued.
const QUEUED_COLUMN: &str = "ALTER TABLE durable_tasks ADD COLUMN queued TEXT;";

/// The trace a durable task's runs join (layout 6): a W3C `traceparent`,
/// null without one.
const TRACE_COLUMN: &str = "ALTER TABLE durable_tasks ADD COLUMN traceparent TEXT;";

/// Durable tasks that resume, and their journals (layout 7): a row per
/// step, keyed by the task's record and the step's index; dropped with the
/// record.
const JOURNAL_SCHEMA: &str = "
ALTER TABLE durable_tasks ADD COLUMN resume INTEGER NOT NULL DEFAULT 0;
CREATE TABLE journal (
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    call TEXT NOT NULL,
    outcome BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    micros INTEGER NOT NULL,
    PRIMARY KEY (seq, step)
) WITHOUT ROWID;
CREATE TRIGGER journal_follows_its_task AFTER DELETE ON durable_tasks
BEGIN
    DELETE FROM journal WHERE seq = old.seq;
END;
";

/// The builds resuming tasks began on (layout 8): a component per version,
/// kept while it is loaded or an unfinished task that resumes began on it
/// (`TaskStore::keep_build`, `drop_builds`).
const BUILDS_SCHEMA: &str = "
CREATE TABLE builds (
    version TEXT PRIMARY KEY,
    plugin TEXT NOT NULL,
    component BLOB NOT NULL,
    kept_ms INTEGER NOT NULL
);
";

/// How each layout is reached from the one before: `LAYOUTS[n]` takes a
/// file of layout `n` to `n + 1`, saying what it adds (for the error).
const LAYOUTS: [(&str, &str); SCHEMA_VERSION as usize] = [
    ("create the tables", SCHEMA),
    ("add the durable task table", TASKS_SCHEMA),
    ("add the schedule table", SCHEDULES_SCHEMA),
    ("add the queue tables", QUEUES_SCHEMA),
    ("add the durable tasks' queue column", QUEUED_COLUMN),
    ("add the durable tasks' trace column", TRACE_COLUMN),
    ("add the journal table", JOURNAL_SCHEMA),
    ("add the table of kept builds", BUILDS_SCHEMA),
];

/// How a store is opened: the key-value limits, whether commits wait for
/// the disk, and how many ended durable tasks it keeps.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// `[limits] kv_*`, checked inside each write's transaction.
    pub kv: KvLimits,
    /// `synchronous = FULL` instead of `NORMAL` (see the module docs).
    pub fsync: bool,
    /// Ended durable task records kept (`[storage] keep_ended_tasks`); the
    /// oldest go first.
    pub keep_ended: u64,
}

///
/// Every call runs on the store's own thread, never on the calling
/// worker's thread: SQLite waits up to its busy timeout (5 s) for a lock another
/// process holds, and a worker blocked meanwhile would hold up every other
/// task on it (probed: a 500 ms sleeper woke 6,148 ms late beside an
/// outside `BEGIN IMMEDIATE`). Cloning shares the one connection.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
    /// The database file, named in every error.
    path: Arc<Path>,
    limits: KvLimits,
    /// Held for the store's life: another host's `try_lock` fails.
    _lock: Arc<Option<File>>,
    /// How long each call took, waiting for the connection and SQLite's
    /// locks included, and how many wait now.
    metrics: StorageMetrics,
    /// Notices the database file deleted or replaced under the host.
    file: FileWatch,
    /// The store's thread, which runs every call of the async traits.
    /// Not tokio's blocking pool: a lock held from outside would park up
    /// to 512 of its threads on the connection's mutex, and DNS lookups
    /// and WASI file calls wait in that pool too.
    jobs: std::sync::mpsc::Sender<Job>,
}

/// One call for the store's thread.
enum Job {
    /// Runs by itself, in its own transaction if it needs one.
    Alone(Box<dyn FnOnce() + Send>),
    /// A durable task's write: run in one transaction with the writes
    /// queued right behind it (group commit), answered once that commits.
    Write(Write),
}

/// The database file's device and inode when opened (none in memory): a
/// file deleted or replaced under the running host is noticed.
#[derive(Clone)]
struct FileWatch {
    path: Arc<Path>,
    opened: Option<(u64, u64)>,
    /// Whether the loss was logged already.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl FileWatch {
    /// Fails once the database file is no longer the one this store
    /// opened (deleted, or replaced): SQLite would go on writing to the
    /// unlinked file, and everything written would be gone at the next
    /// start, silently (issue 24). Every call fails instead, naming the
    /// file, and the host logs it once.
    fn check(&self) -> Result<(), String> {
        let Some(opened) = self.opened else {
            return Ok(());
        };
        if file_id(&self.path) == Some(opened) {
            return Ok(());
        }
        let message = format!(
            "the database file {} was deleted or replaced while this host runs: nothing can be \
             stored now (what was written since the start is only in the deleted file); stop \
             the host and restore the file, or restart it to begin a new one",
            self.path.display()
        );
        if !self.lost.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!("{message}");
        }
        Err(message)
    }
}

/// What the store's thread commits groups with, taken when it starts. A
/// write carried a clone of the store instead: eight reference counts,
/// each raised on a worker's thread and lowered on the store's, twice per
/// durable task.
struct Committer {
    inner: Arc<Mutex<Inner>>,
    path: Arc<Path>,
    keep_ended: u64,
    file: FileWatch,
    /// None in memory, which has no WAL.
    checkpoints: Option<checkpoint::Checkpoints>,
}

/// A write waiting for its group ([`SqliteStore::write`]).
struct Write {
    /// It runs one statement: SQLite undoes a failed statement itself,
    /// so it needs no savepoint (two statements fewer).
    one_statement: bool,
    /// Where its caller waits for the answer ([`Home`]).
    home: Option<Home>,
    /// Runs the write inside the group's transaction (or, given the
    /// reason the group could not begin, runs nothing); returns whether it
    /// failed (so its part is rolled back) and how to answer once the
    /// group committed (given the commit's error, if any).
    run: RunWrite,
}

/// See [`Write::run`].
type RunWrite = Box<dyn FnOnce(Result<&mut Inner, &str>) -> (bool, Answer) + Send>;

/// Answers a write, given the error of its group's commit, if any.
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

/// The thread and runtime a write's caller waits on. A group's answers
/// for one thread are handed to its runtime as one task, which wakes the
/// callers there: one wake-up of that thread for the group, not one per
/// write. Answered one by one from the store's thread, each answer woke
/// the caller's runtime through a write to its eventfd, and on 2 cores
/// each such wake-up preempted the store's thread halfway through its
/// answers (the queues bench's durable rows, `perf sched`).
struct Home {
    /// Tells threads apart within one group (never reused, unlike a
    /// thread-local's address once its thread exits).
    thread: std::thread::ThreadId,
    runtime: tokio::runtime::Handle,
}

impl Home {
    /// The calling thread's, if it runs a tokio runtime.
    fn here() -> Option<Home> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let thread = std::thread::current().id();
        Some(Home { thread, runtime })
    }
}

/// Answers `answers` (each with its caller's home, if known), given the
/// group's commit error, if any: per thread, in one task on its runtime.
fn deliver(answers: Vec<(Option<Home>, Answer)>, why: Option<String>) {
    let mut homes: Vec<(Home, Answers)> = Vec::new();
    for (home, answer) in answers {
        let Some(home) = home else {
            answer(why.as_deref());
            continue;
        };
        match homes.iter_mut().find(|(h, _)| h.thread == home.thread) {
            Some((_, batch)) => batch.answers.push(answer),
            None => homes.push((
                home,
                Answers {
                    answers: vec![answer],
                    why: why.clone(),
                },
            )),
        }
    }
    for (home, batch) in homes {
        // A runtime shut down in the meantime drops the task unrun, and
        // the batch answers as it is dropped.
        drop(home.runtime.spawn(async move { batch.answer() }));
    }
}

/// A thread's answers of one group ([`deliver`]). Dropped unanswered, it
/// answers where it is dropped: no caller is left waiting.
struct Answers {
    answers: Vec<Answer>,
    why: Option<String>,
}

impl Answers {
    fn answer(mut self) {
        self.answer_all();
    }

    fn answer_all(&mut self) {
        for answer in self.answers.drain(..) {
            answer(self.why.as_deref());
        }
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        self.answer_all();
    }
}

/// The most writes one commit takes: enough to spread a commit's WAL
/// write over many tasks, few enough that the first waits little.
const MAX_GROUP: usize = 256;

/// Turns off SQLite's memory statistics, before SQLite first initializes
/// (a no-op after). With them on, every allocation SQLite makes takes one
/// process-wide mutex to count it: 8% of the store thread's time in the
/// queues bench's durable rows (`perf`), and nothing here reads them.
fn without_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `SQLITE_CONFIG_MEMSTATUS` takes one int. Called before
        // SQLite initializes it applies; after, SQLite refuses it
        // (SQLITE_MISUSE) and changes nothing, which is fine.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
        }
    });
}

/// Starts the store's thread; it ends once every clone of the store (each
/// holds a sender) is gone and the calls queued before have run.
fn storage_thread(committer: Committer) -> Result<std::sync::mpsc::Sender<Job>> {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let path = committer.path.clone();
    std::thread::Builder::new()
        .name("taskhost-storage".into())
        .spawn(move || {
            let mut next = None;
            loop {
                let job = match next.take() {
                    Some(job) => job,
                    None => match queue.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                };
                match job {
                    // A panicking call answers nothing (its caller hears
                    // so) and the thread goes on with the next.
                    Job::Alone(job) => {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                    Job::Write(write) => {
                        // The writes queued behind it join its commit, in
                        // order; the first other call ends the group and
                        // runs after it.
                        let mut group = vec![write];
                        while group.len() < MAX_GROUP {
                            match queue.try_recv() {
                                Ok(Job::Write(write)) => group.push(write),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        commit_group(&committer, group);
                    }
                }
                if let Some(checkpoints) = &committer.checkpoints {
                    checkpoints.after_call(&committer.inner, &committer.path);
                }
            }
        })
        .with_context(|| format!("{}: cannot start the storage thread", path.display()))?;
    Ok(jobs)
}

/// Runs `sql` (one statement without parameters), parsed once per
/// connection: a group runs two of them and a savepoint's two or three per
/// write of more than one statement, and parsing them each time was a
/// visible share of the storage thread's time.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs `group`'s writes in one `BEGIN IMMEDIATE` transaction, then
/// commits once and answers them all: every answer comes after the commit,
/// so a write answered is a write stored, as with a transaction each. A
/// write that fails is undone alone: by its savepoint, or, for one of one
/// statement, by SQLite itself.
fn commit_group(store: &Committer, group: Vec<Write>) {
    let mut answers = Vec::with_capacity(group.len());
    let committed = {
        let mut inner = store.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let begun = store.file.check().and_then(|()| {
            inner
                .conn
                .prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut begin| begin.execute([]))
                .map(drop)
                .map_err(|e| {
                    format!(
                        "database {}: cannot begin a write: {e}",
                        store.path.display()
                    )
                })
        });
        match begun {
            Err(why) => {
                for write in group {
                    answers.push((write.home, (write.run)(Err(&why)).1));
                }
                Err(why)
            }
            Ok(()) => {
                let mut failed: Option<String> = None;
                for write in group {
                    let Write {
                        one_statement,
                        home,
                        run,
                    } = write;
                    // Once the group failed (SQLite may even have rolled
                    // it back whole, on a full disk or an I/O error: a
                    // savepoint opened now would begin a transaction of
                    // its own and commit), the rest run nothing and hear
                    // why.
                    if let Some(why) = &failed {
                        answers.push((home, run(Err(why)).1));
                        continue;
                    }
                    if !one_statement && let Err(e) = run_cached(&inner.conn, "SAVEPOINT write") {
                        let why = format!("cannot open a savepoint: {e}");
                        answers.push((home, run(Err(&why)).1));
                        failed = Some(why);
                        continue;
                    }
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run(Ok(&mut inner))
                    }));
                    let (ok, answer) = match ran {
                        Ok((ok, answer)) => (ok, Some(answer)),
                        // Its caller hears that the call panicked.
                        Err(_) => (false, None),
                    };
                    let savepoint = |sql: &str| {
                        run_cached(&inner.conn, sql)
                            .map_err(|e| format!("cannot close a savepoint: {e}"))
                    };
                    let closed = match (one_statement, ok, &answer) {
                        // It panicked, perhaps after its statement ran
                        // (none does in practice): nothing of the group
                        // is kept.
                        (true, _, None) => Err("a write panicked".to_string()),
                        // SQLite undid its statement if it failed.
                        (true, _, Some(_)) => Ok(()),
                        (false, true, _) => savepoint("RELEASE write"),
                        (false, false, _) => {
                            savepoint("ROLLBACK TO write").and_then(|()| savepoint("RELEASE write"))
                        }
                    };
                    if let Err(why) = closed {
                        failed = Some(why);
                    } else if inner.conn.is_autocommit() {
                        failed = Some("SQLite rolled the group's transaction back".into());
                    }
                    if let Some(answer) = answer {
                        answers.push((home, answer));
                    }
                }
                if failed.is_none()
                    && let Err(why) = tasks::trim_ended(&mut inner, store.keep_ended, &store.path)
                {
                    failed = Some(why);
                }
                let done = match failed {
                    Some(why) => Err(why),
                    None => run_cached(&inner.conn, "COMMIT").map_err(|e| e.to_string()),
                };
                done.map_err(|why| {
                    let _ = inner.conn.execute_batch("ROLLBACK");
                    format!("database {}: cannot commit: {why}", store.path.display())
                })
            }
        }
    };
    deliver(answers, committed.err());
}

/// One call counted in `taskhost_storage_calls_waiting` while it lives.
struct Waiting(Gauge);

impl Waiting {
    fn new(gauge: &Gauge) -> Waiting {
        gauge.inc();
        Waiting(gauge.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the store's calls cost, in Prometheus types the host registers
/// (`taskhost_storage_call_seconds`, `taskhost_storage_calls_waiting`):
/// a stall (a lock held from outside, a slow disk) shows there.
#[derive(Clone, Debug)]
pub struct StorageMetrics {
    /// `taskhost_storage_call_seconds`: each call's time from being made to
    /// being answered, the wait for the store's thread and SQLite's locks
    /// included.
    pub call_seconds: Histogram,
    /// `taskhost_storage_calls_waiting`: calls made and not yet answered
    /// (queued or running).
    pub waiting: Gauge,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            // 10 us .. ~42 s, quadrupling.
            call_seconds: Histogram::new(exponential_buckets(1e-5, 4.0, 12)),
            waiting: Gauge::default(),
        }
    }
}

struct Inner {
    conn: Connection,
    /// The version the next write gets.
    next_version: u64,
    /// Ended durable task records, so retention costs a count, not a scan.
    ended_tasks: u64,
}

impl SqliteStore {
    /// Opens (creating if need be) the store in `dir`, which is created
    /// private to this user when missing.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<SqliteStore> {
        create_private_dir(dir)
            .with_context(|| format!("cannot create the storage directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "the storage directory {} is in use by another taskhost: \
                 give each app its own [storage] path",
                dir.display()
            ),
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        let path = dir.join(DATABASE_FILE);
        rename_legacy(dir, &path)?;
        without_memory_statistics();
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        Self::set_up(conn, path, options, Some(lock))
    }

    /// A store that lives in memory only: for benchmarks and for hosts
    /// that run no tasks.
    pub fn in_memory(limits: KvLimits) -> Result<SqliteStore> {
        without_memory_statistics();
        let conn = Connection::open_in_memory().context("cannot open an in-memory database")?;
        let options = StoreOptions {
            kv: limits,
            fsync: false,
            keep_ended: 10_000,
        };
        Self::set_up(conn, PathBuf::from(":memory:"), options, None)
    }

    fn set_up(
        conn: Connection,
        path: PathBuf,
        options: StoreOptions,
        lock: Option<File>,
    ) -> Result<SqliteStore> {
        let StoreOptions {
            kv: limits,
            fsync,
            keep_ended,
        } = options;
        let file = path.display();
        conn.busy_timeout(Duration::from_secs(5))
            .with_context(|| format!("{file}: cannot set the busy timeout"))?;
        if lock.is_some() {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
                .with_context(|| format!("{file}: cannot turn on write-ahead logging"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                bail!("{file}: write-ahead logging refused (journal mode is {mode})");
            }
        }
        let sync = if fsync { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", sync)
            .with_context(|| format!("{file}: cannot set synchronous = {sync}"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .with_context(|| format!("{file}: not a readable SQLite database"))?;
        match version {
            0..SCHEMA_VERSION => {
                // Every step from the file's layout to this one, in one
                // transaction: a file is at one layout or the next, never
                // in between.
                let steps = &LAYOUTS[version as usize..];
                let sql: String = steps.iter().map(|(_, sql)| *sql).collect();
                conn.execute_batch(&format!(
                    "BEGIN; {sql} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .with_context(|| format!("{file}: cannot {}", steps[0].0))?
            }
            SCHEMA_VERSION => {}
            newer if newer > SCHEMA_VERSION => bail!(
                "{file}: written by a newer taskhost (layout {newer}; this one reads layout \
                 {SCHEMA_VERSION}): run that taskhost, or move the file away"
            ),
            broken => bail!("{file}: not a taskhost database (layout {broken})"),
        }
        let last: i64 = conn
            .query_row("SELECT coalesce(max(version), 0) FROM entries", [], |row| {
                row.get(0)
            })
            .with_context(|| format!("{file}: cannot read the entries"))?;
        let ended_tasks: i64 = conn
            .query_row(
                "SELECT count(*) FROM durable_tasks WHERE state <> 'live'",
                [],
                |row| row.get(0),
            )
            .with_context(|| format!("{file}: cannot read the durable tasks"))?;
        let checkpoints = match lock {
            Some(_) => Some(checkpoint::Checkpoints::start(&conn, &path)?),
            None => None,
        };
        let path: Arc<Path> = path.into();
        let file = FileWatch {
            opened: lock.as_ref().and_then(|_| file_id(&path)),
            path: path.clone(),
            lost: Arc::default(),
        };
        let inner = Arc::new(Mutex::new(Inner {
            conn,
            next_version: last as u64 + 1,
            ended_tasks: ended_tasks as u64,
        }));
        let keep_ended = keep_ended.max(1);
        let jobs = storage_thread(Committer {
            inner: inner.clone(),
            path: path.clone(),
            keep_ended,
            file: file.clone(),
            checkpoints,
        })?;
        Ok(SqliteStore {
            jobs,
            file,
            inner,
            path,
            limits,
            _lock: Arc::new(lock),
            metrics: StorageMetrics::default(),
        })
    }

    /// See [`FileWatch::check`].
    fn check_file(&self) -> Result<(), String> {
        self.file.check()
    }

    /// What the store's calls cost (shared: the host registers them).
    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// Runs `call` on a clone of the store on the store's own thread,
    /// timed. Calls run one at a time in the order they were made, each
    /// to its end even if its caller stopped waiting (a task cancelled
    /// mid-write): so a write a cancelled attempt made never lands after
    /// the one its retry made.
    fn off_thread<T: Send + 'static>(
        &self,
        call: impl FnOnce(&SqliteStore) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, String>> + Send + 'static {
        let store = self.clone();
        let metrics = self.metrics.clone();
        // Counted down when this call's future goes, answered or dropped.
        let waiting = Waiting::new(&metrics.waiting);
        let (answer, answered) = tokio::sync::oneshot::channel();
        let sent = self
            .jobs
            .send(Job::Alone(Box::new(move || {
                let done = call(&store);
                // Before the answer: whoever hears it may count on this
                // clone (and the directory's lock it shares) being gone.
                drop(store);
                let _ = answer.send(done);
            })))
            .map_err(|_| "the storage thread has stopped".to_string());
        async move {
            let _waiting = waiting;
            let begun = std::time::Instant::now();
            sent?;
            let done = answered
                .await
                .map_err(|_| "the storage call panicked".to_string());
            metrics.call_seconds.observe(begun.elapsed().as_secs_f64());
            done
        }
    }

    /// A key-value call, off the caller's thread.
    fn kv<T: Send + 'static>(
        &self,
        call: impl FnOnce(&SqliteStore) -> Result<T, KvError> + Send + 'static,
    ) -> KvFuture<'static, T> {
        let done = self.off_thread(call);
        Box::pin(async move { done.await.unwrap_or_else(|e| Err(KvError::Storage(e))) })
    }

    /// A durable-task or schedule call, off the caller's thread.
    fn tasks<T: Send + 'static>(
        &self,
        call: impl FnOnce(&SqliteStore) -> Result<T> + Send + 'static,
    ) -> TaskStoreFuture<'static, T> {
        let done = self.off_thread(call);
        Box::pin(async move { done.await.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}"))) })
    }

    /// A durable task's write (`what` names it in errors), on the store's
    /// thread, committed with the writes queued with it
    /// ([`commit_group`]): `op` runs inside the group's transaction, so it
    /// opens none of its own.
    fn grouped_write<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> TaskStoreFuture<'static, T> {
        self.grouped(what, false, op)
    }

    /// [`SqliteStore::grouped_write`] for an `op` that runs one statement
    /// (and nothing that fails after it): it needs no savepoint.
    fn grouped_statement<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> TaskStoreFuture<'static, T> {
        self.grouped(what, true, op)
    }

    fn grouped<T: Send + 'static>(
        &self,
        what: &'static str,
        one_statement: bool,
        op: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> TaskStoreFuture<'static, T> {
        let metrics = self.metrics.clone();
        let waiting = Waiting::new(&metrics.waiting);
        let (answer, answered) = tokio::sync::oneshot::channel::<Result<T>>();
        let path = self.path.clone();
        let run = move |inner: Result<&mut Inner, &str>| -> (bool, Answer) {
            let done = match inner {
                Ok(inner) => {
                    op(inner).with_context(|| format!("database {}: {what}", path.display()))
                }
                Err(why) => Err(anyhow::anyhow!("{why}")),
            };
            let ok = done.is_ok();
            let answer: Answer = Box::new(move |committed: Option<&str>| {
                let _ = answer.send(match committed {
                    None => done,
                    Some(why) => Err(anyhow::anyhow!("{why}")).context(what),
                });
            });
            (ok, answer)
        };
        let sent = self
            .jobs
            .send(Job::Write(Write {
                one_statement,
                home: Home::here(),
                run: Box::new(run),
            }))
            .map_err(|_| anyhow::anyhow!("the storage thread has stopped"));
        Box::pin(async move {
            let _waiting = waiting;
            let begun = std::time::Instant::now();
            sent?;
            let done = answered
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the storage call panicked")));
            metrics.call_seconds.observe(begun.elapsed().as_secs_f64());
            done
        })
    }

    /// The database file (`:memory:` for one in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn locked<T>(
        &self,
        op: impl FnOnce(&mut Inner, &KvLimits) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.check_file().map_err(KvError::Storage)?;
        // A panic mid-transaction rolled it back when the transaction
        // dropped: the connection is still sound.
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        op(&mut inner, &self.limits).map_err(|error| match error {
            KvError::Storage(message) => {
                KvError::Storage(format!("database {}: {message}", self.path.display()))
            }
            other => other,
        })
    }

    fn read<T>(
        &self,
        op: impl FnOnce(&Transaction<'_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.locked(|inner, _| {
            let tx = inner.conn.transaction()?;
            let value = op(&tx)?;
            tx.commit()?;
            Ok(value)
        })
    }

    fn write<T>(
        &self,
        op: impl FnOnce(&mut Writer<'_, '_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.locked(|inner, limits| {
            let tx = inner
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut writer = Writer {
                tx: &tx,
                limits,
                next_version: &mut inner.next_version,
            };
            let value = op(&mut writer)?;
            tx.commit()?;
            Ok(value)
        })
    }
}

/// A file's device and inode, if it exists.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Moves a database of the name taskhost 0.2 gave it (and its write-ahead
/// log) to today's name, once: under the directory's lock, before opening.
fn rename_legacy(dir: &Path, path: &Path) -> Result<()> {
    let legacy = dir.join(LEGACY_FILE);
    if path.exists() || !legacy.exists() {
        return Ok(());
    }
    for suffix in ["-wal", "-shm", ""] {
        let from = PathBuf::from(format!("{}{suffix}", legacy.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", path.display()));
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
        }
    }
    tracing::info!("renamed {} to {}", legacy.display(), path.display());
    Ok(())
}

impl From<rusqlite::Error> for KvError {
    fn from(error: rusqlite::Error) -> KvError {
        KvError::Storage(error.to_string())
    }
}

/// One write transaction: every change goes through [`Writer::put`] and
/// [`Writer::remove`], which keep the bucket counts and check the limits.
struct Writer<'t, 'c> {
    tx: &'t Transaction<'c>,
    limits: &'t KvLimits,
    next_version: &'t mut u64,
}

impl Writer<'_, '_> {
    /// Adds `delta` to the decimal integer at `key` (none counts as 0).
    fn increment(&mut self, bucket: &BucketId, key: &str, delta: i64) -> Result<i64, KvError> {
        let current = match get_value(self.tx, &bucket.to_string(), key)? {
            None => 0,
            Some(found) => parse_integer(&found.value).ok_or_else(|| KvError::NotAnInteger {
                key: key.to_string(),
            })?,
        };
        let sum = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Overflow {
                key: key.to_string(),
                delta,
            })?;
        self.put(bucket, key, sum.to_string().as_bytes())?;
        Ok(sum)
    }

    /// Makes `write`.
    fn apply(&mut self, bucket: &BucketId, write: &KvWrite) -> Result<KvWritten, KvError> {
        match write {
            KvWrite::Set { key, value } => self.put(bucket, key, value)?,
            KvWrite::Delete { key } => drop(self.remove(bucket, key)?),
            KvWrite::Increment { key, delta } => {
                return self.increment(bucket, key, *delta).map(KvWritten::Sum);
            }
            KvWrite::SetMany(entries) => {
                for (key, value) in entries {
                    self.put(bucket, key, value)?;
                }
            }
            KvWrite::DeleteMany(keys) => {
                for key in keys {
                    self.remove(bucket, key)?;
                }
            }
        }
        Ok(KvWritten::Done)
    }

    fn put(&mut self, bucket: &BucketId, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.limits.check_write(key, value)?;
        let id = bucket.to_string();
        let old = value_len(self.tx, &id, key)?;
        let (added_keys, added_bytes) = match old {
            Some(len) => (0i64, value.len() as i64 - len),
            None => (1, (key.len() + value.len()) as i64),
        };
        if added_keys > 0 {
            let keys: i64 = self
                .tx
                .prepare_cached("SELECT keys FROM buckets WHERE bucket = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?
                .unwrap_or(0);
            if keys as u64 >= self.limits.keys_per_bucket {
                return Err(Limit {
                    what: format!("bucket {bucket}"),
                    max: self.limits.keys_per_bucket,
                    got: keys as u64 + 1,
                    unit: LimitUnit::Keys,
                    setting: Some("kv_keys_per_bucket"),
                }
                .into());
            }
        }
        if added_bytes > 0 {
            let used = self.namespace_bytes(bucket, &id)?;
            let got = (used + added_bytes) as u64;
            if got > self.limits.bytes_per_plugin {
                let what = match bucket.owner() {
                    Some(plugin) => format!("the key-value data of plugin {plugin}"),
                    None => format!("shared bucket {bucket}"),
                };
                return Err(Limit {
                    what,
                    max: self.limits.bytes_per_plugin,
                    got,
                    unit: LimitUnit::Bytes,
                    setting: Some("kv_bytes_per_plugin"),
                }
                .into());
            }
        }
        let version = *self.next_version;
        *self.next_version += 1;
        self.tx
            .prepare_cached(
                "INSERT INTO entries (bucket, key, value, version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (bucket, key)
                 DO UPDATE SET value = excluded.value, version = excluded.version",
            )?
            .execute(params![id, key, value, version as i64])?;
        self.count(bucket, &id, added_keys, added_bytes)
    }

    /// Whether `key` was there.
    fn remove(&mut self, bucket: &BucketId, key: &str) -> Result<bool, KvError> {
        let id = bucket.to_string();
        let Some(len) = value_len(self.tx, &id, key)? else {
            return Ok(false);
        };
        self.tx
            .prepare_cached("DELETE FROM entries WHERE bucket = ?1 AND key = ?2")?
            .execute(params![id, key])?;
        self.count(bucket, &id, -1, -(key.len() as i64 + len))?;
        self.tx
            .prepare_cached("DELETE FROM buckets WHERE bucket = ?1 AND keys <= 0")?
            .execute([&id])?;
        Ok(true)
    }

    fn count(&self, bucket: &BucketId, id: &str, keys: i64, bytes: i64) -> Result<(), KvError> {
        self.tx
            .prepare_cached(
                "INSERT INTO buckets (bucket, owner, keys, bytes) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (bucket)
                 DO UPDATE SET keys = keys + excluded.keys, bytes = bytes + excluded.bytes",
            )?
            .execute(params![id, bucket.owner(), keys, bytes])?;
        Ok(())
    }

    /// What `bytes_per_plugin` bounds: the owner's buckets, or the shared
    /// bucket alone.
    fn namespace_bytes(&self, bucket: &BucketId, id: &str) -> Result<i64, KvError> {
        let bytes = match bucket.owner() {
            Some(owner) => self
                .tx
                .prepare_cached("SELECT coalesce(sum(bytes), 0) FROM buckets WHERE owner = ?1")?
                .query_row([owner], |row| row.get(0))?,
            None => self
                .tx
                .prepare_cached("SELECT bytes FROM buckets WHERE bucket = ?1")?
                .query_row([id], |row| row.get(0))
                .optional()?
                .unwrap_or(0),
        };
        Ok(bytes)
    }

    fn version(&self, id: &str, key: &str) -> Result<Option<u64>, KvError> {
        Ok(self
            .tx
            .prepare_cached("SELECT version FROM entries WHERE bucket = ?1 AND key = ?2")?
            .query_row(params![id, key], |row| row.get::<_, i64>(0))
            .optional()?
            .map(|v| v as u64))
    }
}

fn value_len(tx: &Transaction<'_>, id: &str, key: &str) -> Result<Option<i64>, KvError> {
    Ok(tx
        .prepare_cached("SELECT length(value) FROM entries WHERE bucket = ?1 AND key = ?2")?
        .query_row(params![id, key], |row| row.get(0))
        .optional()?)
}

fn get_value(tx: &Transaction<'_>, id: &str, key: &str) -> Result<Option<Versioned>, KvError> {
    Ok(tx
        .prepare_cached("SELECT value, version FROM entries WHERE bucket = ?1 AND key = ?2")?
        .query_row(params![id, key], |row| {
            Ok(Versioned {
                value: row.get(0)?,
                version: row.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?)
}

/// A decimal integer, as `increment` stores it (surrounding ASCII
/// whitespace allowed, as JSON allows it).
fn parse_integer(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

impl SqliteStore {
    fn get_now(&self, bucket: &BucketId, key: &str) -> Result<Option<Versioned>, KvError> {
        let id = bucket.to_string();
        self.read(|tx| get_value(tx, &id, key))
    }

    fn list_now(
        &self,
        bucket: &BucketId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        let id = bucket.to_string();
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT key FROM entries WHERE bucket = ?1 AND key > ?2 ORDER BY key LIMIT ?3",
            )?;
            // One more than asked: whether it comes says if a page follows.
            let rows = statement.query_map(
                params![id, after.unwrap_or(""), limit.saturating_add(1) as i64],
                |row| row.get::<_, String>(0),
            )?;
            let mut keys = rows.collect::<Result<Vec<_>, _>>()?;
            let next = if keys.len() > limit {
                keys.truncate(limit);
                keys.last().cloned()
            } else {
                None
            };
            Ok(KeyPage { keys, next })
        })
    }

    fn increment_now(&self, bucket: &BucketId, key: &str, delta: i64) -> Result<i64, KvError> {
        self.write(|writer| writer.increment(bucket, key, delta))
    }

    /// [`KvStore::write_journaled`]: the write under a savepoint (undone
    /// alone when it fails: its error is the answer journaled), then the
    /// steps, in one transaction.
    fn write_journaled_now(
        &self,
        bucket: &BucketId,
        write: &KvWrite,
        steps: StepsToAppend,
        encode: EncodeAnswer,
    ) -> Result<Journaled, KvError> {
        self.locked(|inner, limits| {
            let tx = inner
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch("SAVEPOINT kv_write")?;
            let answer = Writer {
                tx: &tx,
                limits,
                next_version: &mut inner.next_version,
            }
            .apply(bucket, write);
            if answer.is_err() {
                tx.execute_batch("ROLLBACK TO kv_write")?;
            }
            tx.execute_batch("RELEASE kv_write")?;
            let mut rows = steps.before;
            let mut outcome_bytes = 0;
            if let Some(mut own) = steps.own {
                own.outcome = encode(&answer);
                own.micros = steps.began.elapsed().as_micros() as u64;
                if own.outcome.len() > steps.room {
                    // Dropped, the transaction undoes the write too.
                    return Ok(Journaled {
                        answer,
                        outcome_bytes: None,
                    });
                }
                outcome_bytes = own.outcome.len();
                rows.push(own);
            }
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO journal (seq, step, call, outcome, at_ms, micros)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for step in rows {
                    insert.execute(params![
                        steps.seq as i64,
                        step.index,
                        step.call,
                        step.outcome,
                        step.at_ms as i64,
                        step.micros as i64
                    ])?;
                }
            }
            tx.commit()?;
            Ok(Journaled {
                answer,
                outcome_bytes: Some(outcome_bytes),
            })
        })
    }

    fn swap_now(
        &self,
        bucket: &BucketId,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
    ) -> Result<Swap, KvError> {
        let id = bucket.to_string();
        self.write(|writer| {
            let current = writer.version(&id, key)?;
            if current != expected {
                return Ok(Swap::Changed(current));
            }
            writer.put(bucket, key, value)?;
            Ok(Swap::Done)
        })
    }

    fn get_many_now(
        &self,
        bucket: &BucketId,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let id = bucket.to_string();
        self.read(|tx| {
            keys.iter()
                .map(|key| Ok(get_value(tx, &id, key)?.map(|found| found.value)))
                .collect()
        })
    }

    fn buckets_now(&self) -> Result<Vec<BucketStats>, KvError> {
        self.read(|tx| {
            let mut statement =
                tx.prepare_cached("SELECT bucket, keys, bytes FROM buckets ORDER BY bucket")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })?;
            let mut stats = Vec::new();
            for row in rows {
                let (id, keys, bytes) = row?;
                let bucket = BucketId::parse(&id)
                    .map_err(|error| KvError::Storage(format!("stored bucket {id:?}: {error}")))?;
                stats.push(BucketStats {
                    bucket,
                    keys: keys as u64,
                    bytes: bytes as u64,
                });
            }
            Ok(stats)
        })
    }
}

impl KvStore for SqliteStore {
    fn get<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        let (bucket, key) = (bucket.clone(), key.to_owned());
        self.kv(move |store| {
            store
                .get_now(&bucket, &key)
                .map(|found| found.map(|found| found.value))
        })
    }

    fn get_versioned<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
    ) -> KvFuture<'a, Option<Versioned>> {
        let (bucket, key) = (bucket.clone(), key.to_owned());
        self.kv(move |store| store.get_now(&bucket, &key))
    }

    fn set<'a>(&'a self, bucket: &'a BucketId, key: &'a str, value: &'a [u8]) -> KvFuture<'a, ()> {
        let (bucket, key, value) = (bucket.clone(), key.to_owned(), value.to_vec());
        self.kv(move |store| store.write(|writer| writer.put(&bucket, &key, &value)))
    }

    fn delete<'a>(&'a self, bucket: &'a BucketId, key: &'a str) -> KvFuture<'a, bool> {
        let (bucket, key) = (bucket.clone(), key.to_owned());
        self.kv(move |store| store.write(|writer| writer.remove(&bucket, &key)))
    }

    fn list_keys<'a>(
        &'a self,
        bucket: &'a BucketId,
        after: Option<&'a str>,
        limit: usize,
    ) -> KvFuture<'a, KeyPage> {
        let (bucket, after) = (bucket.clone(), after.map(str::to_owned));
        self.kv(move |store| store.list_now(&bucket, after.as_deref(), limit))
    }

    fn increment<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, i64> {
        let (bucket, key) = (bucket.clone(), key.to_owned());
        self.kv(move |store| store.increment_now(&bucket, &key, delta))
    }

    fn swap<'a>(
        &'a self,
        bucket: &'a BucketId,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
    ) -> KvFuture<'a, Swap> {
        let (bucket, key, value) = (bucket.clone(), key.to_owned(), value.to_vec());
        self.kv(move |store| store.swap_now(&bucket, &key, expected, &value))
    }

    fn get_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        keys: &'a [String],
    ) -> KvFuture<'a, Vec<Option<Vec<u8>>>> {
        let (bucket, keys) = (bucket.clone(), keys.to_vec());
        self.kv(move |store| store.get_many_now(&bucket, &keys))
    }

    fn set_many<'a>(
        &'a self,
        bucket: &'a BucketId,
        entries: &'a [(String, Vec<u8>)],
    ) -> KvFuture<'a, ()> {
        let (bucket, entries) = (bucket.clone(), entries.to_vec());
        self.kv(move |store| {
            store.write(|writer| {
                entries
                    .iter()
                    .try_for_each(|(key, value)| writer.put(&bucket, key, value))
            })
        })
    }

    fn delete_many<'a>(&'a self, bucket: &'a BucketId, keys: &'a [String]) -> KvFuture<'a, ()> {
        let (bucket, keys) = (bucket.clone(), keys.to_vec());
        self.kv(move |store| {
            store.write(|writer| {
                keys.iter()
                    .try_for_each(|key| writer.remove(&bucket, key).map(drop))
            })
        })
    }

    fn buckets(&self) -> KvFuture<'_, Vec<BucketStats>> {
        self.kv(|store| store.buckets_now())
    }

    fn journals_writes(&self) -> bool {
        true
    }

    fn write_journaled<'a>(
        &'a self,
        bucket: &'a BucketId,
        write: KvWrite,
        steps: StepsToAppend,
        encode: EncodeAnswer,
    ) -> KvFuture<'a, Journaled> {
        let bucket = bucket.clone();
        self.kv(move |store| store.write_journaled_now(&bucket, &write, steps, encode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> StoreOptions {
        StoreOptions {
            kv: limits(),
            fsync: false,
            keep_ended: 10,
        }
    }

    fn limits() -> KvLimits {
        KvLimits {
            key_bytes: 16,
            value_bytes: 64,
            keys_per_bucket: 3,
            bytes_per_plugin: 100,
        }
    }

    fn block<T>(future: KvFuture<'_, T>) -> Result<T, KvError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// Issue 24, item 11: with the database file deleted under a running
    /// host, writes went on succeeding into the unlinked file and were
    /// gone at the next start. Now every call fails, naming the file.
    #[test]
    fn a_database_file_deleted_under_the_store_fails_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let a = BucketId::private("p", "b").unwrap();
        let store = SqliteStore::open(dir.path(), options()).unwrap();
        block(store.set(&a, "k", b"v1")).unwrap();
        std::fs::remove_file(dir.path().join(DATABASE_FILE)).unwrap();
        let error = block(store.set(&a, "k", b"v2")).unwrap_err().to_string();
        assert!(error.contains("was deleted or replaced"), "{error}");
        assert!(error.contains(DATABASE_FILE), "{error}");
        let error = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(crate::storage::TaskStore::unfinished(&store))
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("was deleted or replaced"),
            "{error:#}"
        );
    }

    #[test]
    fn values_and_counts_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let a = BucketId::private("p", "b").unwrap();
        {
            let store = SqliteStore::open(dir.path(), options()).unwrap();
            block(store.set(&a, "k", b"v1")).unwrap();
            assert_eq!(block(store.increment(&a, "n", 5)).unwrap(), 5);
            assert!(block(store.delete(&a, "missing")).map(|was| !was).unwrap());
        }
        let store = SqliteStore::open(dir.path(), options()).unwrap();
        assert_eq!(block(store.get(&a, "k")).unwrap(), Some(b"v1".to_vec()));
        assert_eq!(block(store.get(&a, "n")).unwrap(), Some(b"5".to_vec()));
        let stats = block(store.buckets()).unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].keys, stats[0].bytes), (2, 1 + 2 + 1 + 1));
    }

    /// The writer's connection checkpoints nothing itself below 10,000
    /// WAL pages: what it commits reaches the database file through the
    /// checkpoint thread. 1,500 values of 4 KB, one commit each, take the
    /// WAL past the 1,000 pages that wake that thread.
    #[test]
    fn commits_reach_the_database_file_through_the_checkpoint_thread() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            kv: KvLimits {
                key_bytes: 16,
                value_bytes: 4_096,
                keys_per_bucket: 10_000,
                bytes_per_plugin: 100 << 20,
            },
            ..options()
        };
        let store = SqliteStore::open(dir.path(), options).unwrap();
        let file = dir.path().join(DATABASE_FILE);
        let before = std::fs::metadata(&file).unwrap().len();
        let a = BucketId::private("p", "b").unwrap();
        let value = vec![7u8; 4_000];
        for i in 0..1_500 {
            block(store.set(&a, &format!("k{i}"), &value)).unwrap();
        }
        // The thread copies on its own time: wait for the file to grow.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::fs::metadata(&file).unwrap().len() < before + 1_000 * 4_096 {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint: {file:?} stayed at {} bytes",
                std::fs::metadata(&file).unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(store);
        let store = SqliteStore::open(dir.path(), options).unwrap();
        assert_eq!(block(store.get(&a, "k1499")).unwrap(), Some(value));
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteStore::open(dir.path(), options()).unwrap();
        let err = SqliteStore::open(dir.path(), options()).err().unwrap();
        assert!(
            err.to_string().contains("in use by another taskhost"),
            "{err}"
        );
    }

    #[test]
    fn every_limit_names_its_setting_and_changes_nothing() {
        let store = SqliteStore::in_memory(limits()).unwrap();
        let a = BucketId::private("p", "a").unwrap();
        let setting = |error: KvError| match error {
            KvError::Limit(limit) => limit.setting.unwrap(),
            other => panic!("not a limit: {other}"),
        };
        let long_key = "k".repeat(17);
        assert_eq!(
            setting(block(store.set(&a, &long_key, b"")).unwrap_err()),
            "kv_key_bytes"
        );
        assert_eq!(
            setting(block(store.set(&a, "k", &[0; 65])).unwrap_err()),
            "kv_value_bytes"
        );
        for key in ["1", "2", "3"] {
            block(store.set(&a, key, b"x")).unwrap();
        }
        assert_eq!(
            setting(block(store.set(&a, "4", b"x")).unwrap_err()),
            "kv_keys_per_bucket"
        );
        // Overwriting an existing key adds no key.
        block(store.set(&a, "3", b"y")).unwrap();
        // 6 bytes used in `a`; a second bucket of the same plugin shares the
        // 100 bytes.
        let b = BucketId::private("p", "b").unwrap();
        block(store.set(&b, "k", &[0; 60])).unwrap();
        let err = block(store.set(&b, "l", &[0; 40])).unwrap_err();
        assert_eq!(setting(err), "kv_bytes_per_plugin");
        // Another plugin has its own budget.
        let other = BucketId::private("q", "b").unwrap();
        block(store.set(&other, "l", &[0; 60])).unwrap();
        assert_eq!(block(store.get(&b, "l")).unwrap(), None);
        // A batch over a limit writes none of its pairs.
        let batch = vec![("m".to_string(), vec![1]), ("n".to_string(), vec![0; 40])];
        assert_eq!(
            setting(block(store.set_many(&b, &batch)).unwrap_err()),
            "kv_bytes_per_plugin"
        );
        assert_eq!(block(store.get(&b, "m")).unwrap(), None);
    }

    fn run(future: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// The backend contract (`storage::contract`), key-value part; values,
    /// versions, counters, batches, pages, limits and isolation.
    #[test]
    fn keeps_the_key_value_contract() {
        let store = SqliteStore::in_memory(crate::storage::contract::KV_LIMITS).unwrap();
        run(crate::storage::contract::kv(&store));
    }

    #[test]
    fn keeps_the_durable_task_contract() {
        let store = SqliteStore::in_memory(limits()).unwrap();
        run(crate::storage::contract::tasks(&store));
        run(crate::storage::contract::journals(&store));
    }

    #[test]
    fn keeps_the_schedule_contract() {
        let store = SqliteStore::in_memory(limits()).unwrap();
        run(crate::storage::contract::schedules(&store));
    }

    /// A resuming task's write and its journal steps commit together: the
    /// answer is journaled with the write (an error answer too, with the
    /// write undone), and a step past the journal's room undoes both.
    #[test]
    fn a_journaled_write_and_its_steps_commit_together() {
        use crate::storage::{JournalStep, NewTask, StepsToAppend, Submitted, TaskStore};
        let store = SqliteStore::in_memory(limits()).unwrap();
        run(async {
            let task = NewTask {
                name: None,
                worker: crate::task::WorkerId::Index(0),
                plugin: "p".into(),
                plugin_version: "1".into(),
                factory: "f".into(),
                args: "{}".into(),
                retry: None,
                idempotency_key: None,
                queued: None,
                started: true,
                traceparent: None,
                resume: true,
            };
            let Submitted::New(task) = store.submit(task).await.unwrap() else {
                panic!("not new");
            };
            let step = |index: u32, call: &str| JournalStep {
                index,
                call: call.into(),
                outcome: Vec::new(),
                at_ms: 1,
                micros: 0,
            };
            let steps = |before: Vec<JournalStep>, own: JournalStep, room: usize| StepsToAppend {
                seq: task.seq,
                before,
                own: Some(own),
                room,
                began: std::time::Instant::now(),
            };
            let encode: fn() -> EncodeAnswer =
                || Box::new(|answer| format!("{answer:?}").into_bytes());
            let b = BucketId::private("p", "b").unwrap();
            let increment = |delta| KvWrite::Increment {
                key: "n".into(),
                delta,
            };
            let done = store
                .write_journaled(
                    &b,
                    increment(5),
                    steps(vec![step(0, "seed")], step(1, "inc"), 100),
                    encode(),
                )
                .await
                .unwrap();
            assert_eq!(done.answer.unwrap(), KvWritten::Sum(5));
            let journal = store.steps(task.seq).await.unwrap();
            assert_eq!(journal.len(), 2, "{journal:?}");
            assert_eq!(journal[1].outcome, b"Ok(Sum(5))");
            // Past the room: neither the write nor the step.
            let over = store
                .write_journaled(&b, increment(1), steps(vec![], step(2, "inc"), 3), encode())
                .await
                .unwrap();
            assert_eq!(over.outcome_bytes, None);
            assert_eq!(store.get(&b, "n").await.unwrap().unwrap(), b"5");
            assert_eq!(store.steps(task.seq).await.unwrap().len(), 2);
            // A refused write: its error is the answer journaled.
            store.set(&b, "text", b"x").await.unwrap();
            let refused = store
                .write_journaled(
                    &b,
                    KvWrite::Increment {
                        key: "text".into(),
                        delta: 1,
                    },
                    steps(vec![], step(2, "inc text"), 1000),
                    encode(),
                )
                .await
                .unwrap();
            assert!(matches!(refused.answer, Err(KvError::NotAnInteger { .. })));
            assert_eq!(store.get(&b, "text").await.unwrap().unwrap(), b"x");
            let journal = store.steps(task.seq).await.unwrap();
            assert!(
                String::from_utf8_lossy(&journal[2].outcome).contains("NotAnInteger"),
                "{journal:?}"
            );
        });
    }
}
