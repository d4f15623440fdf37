//! Durable task records in the SQLite store: one row per task, written at
//! submission, at each retry or re-run, at a cancel and at the end. Each
//! write commits with the writes queued with it (group commit:
//! `SqliteStore::grouped_write`), and is answered once they did.

use super::{Inner, SqliteStore};
use crate::config::RetrySpec;
use crate::storage::journal::JournalStep;
use crate::storage::tasks::{
    NewTask, Submitted, TaskRecord, TaskStore, TaskStoreFuture, outcome_columns,
    outcome_from_columns,
};
use crate::task::{Outcome, WorkerId, unix_millis};
use anyhow::{Context, Result};
use rusqlite::{OptionalExtension, Row, params};
use std::sync::PoisonError;
use std::time::SystemTime;

const COLUMNS: &str = "seq, name, worker, plugin, factory, args, retry, idempotency_key, attempt, \
                       state, cancel_requested, result, error, cancel_stage, created_ms, ended_ms, \
                       plugin_version, queued, traceparent, resume";

fn record(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let worker: String = row.get(2)?;
    let retry: Option<String> = row.get(6)?;
    let state: String = row.get(9)?;
    Ok(TaskRecord {
        seq: row.get::<_, i64>(0)? as u64,
        name: row.get(1)?,
        // Written by `submit` from a WorkerId: always one.
        worker: worker.parse().unwrap_or(WorkerId::Index(0)),
        plugin: row.get(3)?,
        plugin_version: row.get(16)?,
        factory: row.get(4)?,
        args: row.get(5)?,
        // Written by `submit` from a RetrySpec; a record whose policy
        // cannot be read back runs without retries rather than not at all.
        retry: retry.and_then(|text| serde_json::from_str::<RetrySpec>(&text).ok()),
        idempotency_key: row.get(7)?,
        attempt: u32::try_from(row.get::<_, i64>(8)?).map_err(|_| bad_column(8, "attempt"))?,
        outcome: match state.as_str() {
            "live" => None,
            "done" | "failed" | "cancelled" => {
                outcome_from_columns(&state, row.get(11)?, row.get(12)?, row.get(13)?)
            }
            _ => return Err(bad_column(9, "state (live, done, failed or cancelled)")),
        },
        cancel_requested: row.get::<_, i64>(10)? != 0,
        created_ms: row.get::<_, i64>(14)? as u64,
        ended_ms: row.get::<_, Option<i64>>(15)?.map(|ms| ms as u64),
        // Written by `submit` from a `Queued`.
        queued: row
            .get::<_, Option<String>>(17)?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|_| bad_column(17, "queue placement"))?,
        traceparent: row.get(18)?,
        resume: row.get::<_, i64>(19)? != 0,
    })
}

/// A column whose value is of the right type but not a value the host
/// writes: an error naming it (the row is named by `select`).
fn bad_column(index: usize, what: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Integer,
        format!("not a valid {what}").into(),
    )
}

fn now_ms() -> i64 {
    unix_millis(SystemTime::now()) as i64
}

impl SqliteStore {
    /// Runs `op` on the connection; errors name the database file.
    pub(super) fn tasks_op<T>(
        &self,
        what: &str,
        op: impl FnOnce(&mut Inner) -> Result<T>,
    ) -> Result<T> {
        self.check_file().map_err(anyhow::Error::msg)?;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        op(&mut inner).with_context(|| format!("database {}: {what}", self.path.display()))
    }

    /// Records `task`, inside the group's transaction.
    fn submit_in(inner: &mut Inner, task: NewTask) -> Result<Submitted> {
        let conn = &inner.conn;
        if let Some(key) = &task.idempotency_key {
            let existing = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM durable_tasks WHERE idempotency_key = ?1"
                ))?
                .query_row([key], record)
                .optional()?;
            if let Some(existing) = existing {
                return Ok(Submitted::Existing(existing));
            }
        }
        let retry = task.retry.as_ref().map(serde_json::to_string).transpose()?;
        let queued = task
            .queued
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let attempt = u32::from(task.started);
        let created_ms = now_ms();
        // An unnamed task is named by its seq, written in the one insert
        // (so the write needs no savepoint): AUTOINCREMENT gives one past
        // the larger of the largest seq it ever gave (kept in
        // sqlite_sequence) and the largest in the table.
        let inserted = conn
            .prepare_cached(
                "INSERT INTO durable_tasks
               (name, worker, plugin, factory, args, retry, idempotency_key, attempt, state,
                created_ms, plugin_version, queued, traceparent, resume)
             VALUES (coalesce(?1, 'durable-' || (max(
                       coalesce((SELECT seq FROM sqlite_sequence
                                 WHERE name = 'durable_tasks'), 0),
                       coalesce((SELECT max(seq) FROM durable_tasks), 0)) + 1)),
                     ?2, ?3, ?4, ?5, ?6, ?7, ?10, 'live', ?8, ?9, ?11, ?12, ?13)
             RETURNING seq, name",
            )?
            .query_row(
                params![
                    task.name,
                    task.worker.to_string(),
                    task.plugin,
                    task.factory,
                    task.args,
                    retry,
                    task.idempotency_key,
                    created_ms,
                    task.plugin_version,
                    attempt,
                    queued,
                    task.traceparent,
                    task.resume,
                ],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )?;
        let (seq, stored) = inserted;
        let name = match &task.name {
            Some(name) => name.clone(),
            None => format!("durable-{seq}"),
        };
        if stored != name {
            // The rule above says this cannot happen. Should SQLite
            // ever pick another seq, the name is mended; a second
            // statement that failed after the insert could not be
            // undone alone (the write has no savepoint), so it panics,
            // which takes the group's transaction with it.
            if let Err(error) = conn
                .prepare_cached("UPDATE durable_tasks SET name = ?2 WHERE seq = ?1")
                .and_then(|mut update| update.execute(params![seq, name]))
            {
                panic!("cannot name durable task {seq} {name:?} after its insert: {error}");
            }
        }
        // The record as written, built rather than read back.
        let stored = TaskRecord {
            seq: seq as u64,
            name,
            worker: task.worker,
            plugin: task.plugin,
            plugin_version: task.plugin_version,
            factory: task.factory,
            args: task.args,
            retry: task.retry,
            idempotency_key: task.idempotency_key,
            attempt,
            outcome: None,
            cancel_requested: false,
            created_ms: created_ms as u64,
            ended_ms: None,
            queued: task.queued,
            traceparent: task.traceparent,
            resume: task.resume,
        };
        Ok(Submitted::New(stored))
    }

    pub(super) fn execute(
        &self,
        what: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<usize> {
        self.tasks_op(what, |inner| {
            Ok(inner.conn.prepare_cached(sql)?.execute(params)?)
        })
    }

    /// Records how task `seq` ended, inside the group's transaction.
    fn ended_in(inner: &mut Inner, seq: u64, outcome: &Outcome, stopped: bool) -> Result<bool> {
        let (state, result, error, stage) = outcome_columns(outcome);
        // A task that was stopped ended only if it is done or its
        // cancel was recorded; a cancelled outcome always was stopped.
        let stopped = stopped || state == "cancelled";
        let changed = inner
            .conn
            .prepare_cached(
                "UPDATE durable_tasks
                 SET state = ?2, result = ?3, error = ?4, cancel_stage = ?5, ended_ms = ?6
                 WHERE seq = ?1 AND state = 'live'
                   AND (?2 = 'done' OR NOT ?7 OR cancel_requested)",
            )?
            .execute(params![
                seq as i64,
                state,
                result,
                error,
                stage,
                now_ms(),
                stopped
            ])?;
        if changed == 0 {
            return Ok(false);
        }
        // Trimmed to the retention once per group ([`trim_ended`]).
        inner.ended_tasks += 1;
        Ok(true)
    }

    /// Runs `sql` with `params` as a grouped write (`what` names it).
    fn write_row<P: rusqlite::Params + Send + 'static>(
        &self,
        what: &'static str,
        sql: &'static str,
        params: P,
    ) -> TaskStoreFuture<'static, ()> {
        self.grouped_statement(what, move |inner| {
            inner.conn.prepare_cached(sql)?.execute(params)?;
            Ok(())
        })
    }

    fn select(
        &self,
        what: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<TaskRecord>> {
        self.tasks_op(what, |inner| {
            let mut statement = inner.conn.prepare_cached(sql)?;
            let mut rows = statement.query(params)?;
            let mut records = Vec::new();
            while let Some(row) = rows.next()? {
                // A row another program changed names itself, so the
                // operator knows which one to mend or delete.
                let read = record(row).with_context(|| match row.get::<_, i64>(0) {
                    Ok(seq) => format!(
                        "the row of durable_tasks with seq = {seq} does not read back: mend or \
                         delete it"
                    ),
                    Err(_) => "a row of durable_tasks has no valid seq: mend or delete it".into(),
                })?;
                records.push(read);
            }
            Ok(records)
        })
    }
}

/// Trims the ended records to `keep` once they are an eighth over
/// (amortized), once per group of writes, before its commit. A trim that
/// fails is logged and undone by SQLite (one statement); an error only if
/// it took the group's transaction with it.
pub(super) fn trim_ended(
    inner: &mut Inner,
    keep: u64,
    path: &std::path::Path,
) -> Result<(), String> {
    if inner.ended_tasks <= keep + keep / 8 {
        return Ok(());
    }
    let trimmed = inner
        .conn
        .prepare_cached(
            "DELETE FROM durable_tasks WHERE seq IN (
               SELECT seq FROM durable_tasks WHERE state <> 'live'
               ORDER BY ended_ms, seq LIMIT ?1)",
        )
        .and_then(|mut delete| delete.execute([(inner.ended_tasks - keep) as i64]));
    match trimmed {
        Ok(dropped) => inner.ended_tasks -= dropped as u64,
        Err(error) => tracing::warn!(
            "database {}: cannot drop the oldest ended durable tasks past the {keep} kept \
             ({error}); tried again at the next write",
            path.display()
        ),
    }
    if inner.conn.is_autocommit() {
        return Err("SQLite rolled the group's transaction back".into());
    }
    Ok(())
}

impl TaskStore for SqliteStore {
    fn submit(&self, task: NewTask) -> TaskStoreFuture<'_, Submitted> {
        // One statement that changes anything (the key's lookup only
        // reads): no savepoint, whose two statements cost as much again.
        self.grouped_statement("cannot record a durable task", move |inner| {
            SqliteStore::submit_in(inner, task)
        })
    }

    fn forget(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        self.write_row(
            "cannot drop a durable task",
            "DELETE FROM durable_tasks WHERE seq = ?1",
            [seq as i64],
        )
    }

    fn attempt_started(&self, seq: u64, attempt: u32) -> TaskStoreFuture<'_, ()> {
        self.write_row(
            "cannot record a durable task's attempt",
            "UPDATE durable_tasks SET attempt = ?2 WHERE seq = ?1",
            (seq as i64, attempt),
        )
    }

    fn cancel_requested(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        self.write_row(
            "cannot record a durable task's cancel",
            "UPDATE durable_tasks SET cancel_requested = 1 WHERE seq = ?1",
            [seq as i64],
        )
    }

    fn ended<'a>(
        &'a self,
        seq: u64,
        outcome: &'a Outcome,
        stopped: bool,
    ) -> TaskStoreFuture<'a, bool> {
        let outcome = outcome.clone();
        self.grouped_statement("cannot record how a durable task ended", move |inner| {
            SqliteStore::ended_in(inner, seq, &outcome, stopped)
        })
    }

    fn unfinished(&self) -> TaskStoreFuture<'_, Vec<TaskRecord>> {
        self.tasks(move |store| {
            store.select(
                "cannot read the unfinished durable tasks",
                &format!(
                    "SELECT {COLUMNS} FROM durable_tasks
                 WHERE state = 'live' ORDER BY seq"
                ),
                [],
            )
        })
    }

    fn recently_ended(&self, limit: usize) -> TaskStoreFuture<'_, Vec<TaskRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.tasks(move |store| {
            store
                .select(
                    "cannot read the ended durable tasks",
                    &format!(
                        "SELECT {COLUMNS} FROM durable_tasks WHERE state <> 'live'
                     ORDER BY ended_ms DESC, seq DESC LIMIT ?1"
                    ),
                    [limit],
                )
                .map(|mut records| {
                    records.reverse();
                    records
                })
        })
    }

    fn keeps_journals(&self) -> bool {
        true
    }

    fn append_steps(&self, seq: u64, steps: Vec<JournalStep>) -> TaskStoreFuture<'_, ()> {
        // One group's write, under a savepoint: all the steps or none.
        self.grouped_write("cannot append to a durable task's journal", move |inner| {
            let mut insert = inner.conn.prepare_cached(
                "INSERT INTO journal (seq, step, call, outcome, at_ms, micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for step in steps {
                insert
                    .execute(params![
                        seq as i64,
                        step.index,
                        step.call,
                        step.outcome,
                        step.at_ms as i64,
                        step.micros as i64
                    ])
                    .with_context(|| {
                        format!("step {} of durable task {seq}'s journal", step.index)
                    })?;
            }
            Ok(())
        })
    }

    fn clear_steps(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        self.write_row(
            "cannot empty a durable task's journal",
            "DELETE FROM journal WHERE seq = ?1",
            [seq as i64],
        )
    }

    fn steps(&self, seq: u64) -> TaskStoreFuture<'_, Vec<JournalStep>> {
        self.tasks(move |store| {
            store.tasks_op("cannot read a durable task's journal", |inner| {
                let mut select = inner.conn.prepare_cached(
                    "SELECT step, call, outcome, at_ms, micros FROM journal
                     WHERE seq = ?1 ORDER BY step",
                )?;
                let steps = select
                    .query_map([seq as i64], |row| {
                        Ok(JournalStep {
                            index: row.get(0)?,
                            call: row.get(1)?,
                            outcome: row.get(2)?,
                            at_ms: row.get::<_, i64>(3)? as u64,
                            micros: row.get::<_, i64>(4)? as u64,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(steps)
            })
        })
    }

    fn keep_build(
        &self,
        plugin: &str,
        version: &str,
        component: Vec<u8>,
    ) -> TaskStoreFuture<'_, ()> {
        let (plugin, version) = (plugin.to_string(), version.to_string());
        self.tasks(move |store| {
            store.tasks_op("cannot keep a plugin's build", |inner| {
                // Looked up first: a build loaded again (every start) is
                // not written again.
                let kept = inner
                    .conn
                    .prepare_cached("SELECT 1 FROM builds WHERE version = ?1")?
                    .exists([&version])?;
                if !kept {
                    inner
                        .conn
                        .prepare_cached(
                            "INSERT OR IGNORE INTO builds (version, plugin, component, kept_ms)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            version,
                            plugin,
                            component,
                            unix_millis(SystemTime::now()) as i64
                        ])
                        .with_context(|| format!("build {version} of plugin `{plugin}`"))?;
                }
                Ok(())
            })
        })
    }

    fn kept_build(&self, version: &str) -> TaskStoreFuture<'_, Option<Vec<u8>>> {
        let version = version.to_string();
        self.tasks(move |store| {
            store.tasks_op("cannot read a kept build", |inner| {
                Ok(inner
                    .conn
                    .prepare_cached("SELECT component FROM builds WHERE version = ?1")?
                    .query_row([&version], |row| row.get(0))
                    .optional()?)
            })
        })
    }

    fn drop_builds(&self, serving: Vec<String>) -> TaskStoreFuture<'_, u64> {
        self.tasks(move |store| {
            store.tasks_op("cannot drop the kept builds no task needs", |inner| {
                let serving = serde_json::to_string(&serving)?;
                let dropped = inner.conn.execute(
                    "DELETE FROM builds
                     WHERE version NOT IN (SELECT value FROM json_each(?1))
                       AND version NOT IN (SELECT plugin_version FROM durable_tasks
                                           WHERE resume = 1 AND state = 'live')",
                    [serving],
                )?;
                Ok(dropped as u64)
            })
        })
    }

    fn purge_ended(&self) -> TaskStoreFuture<'_, u64> {
        self.tasks(move |store| {
            store.tasks_op("cannot purge the ended durable tasks", |inner| {
                let dropped = inner
                    .conn
                    .prepare_cached("DELETE FROM durable_tasks WHERE state <> 'live'")?
                    .execute([])? as u64;
                inner.ended_tasks = 0;
                Ok(dropped)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KvLimits, StoreOptions};
    use crate::task::CancelStage;

    fn store(dir: &std::path::Path, keep_ended: u64) -> SqliteStore {
        let kv = KvLimits {
            key_bytes: 16,
            value_bytes: 16,
            keys_per_bucket: 4,
            bytes_per_plugin: 64,
        };
        SqliteStore::open(
            dir,
            StoreOptions {
                kv,
                fsync: false,
                keep_ended,
            },
        )
        .unwrap()
    }

    /// Runs a store call (on the store's thread, awaited on a runtime of its own).
    fn block<T>(future: TaskStoreFuture<'_, T>) -> T {
        block_result(future).unwrap()
    }

    fn block_result<T>(future: TaskStoreFuture<'_, T>) -> Result<T> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// Writes queued together share one commit, each under its own
    /// savepoint: one that fails is rolled back alone, and the others are
    /// answered once committed.
    #[test]
    fn writes_queued_together_commit_together_and_a_failed_one_alone_is_undone() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        // The store's thread waits until all three writes are queued, so
        // they are one group.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let held = store.off_thread(move |_| hold.recv().ok());
        let (one, three) = (new_task(Some("first"), None), new_task(Some("third"), None));
        // Each call is sent to the store's thread when made.
        let first = store.submit(one);
        let failing = store.grouped_write("cannot do the failing write", |inner| {
            SqliteStore::submit_in(inner, new_task(Some("undone"), None))?;
            Err::<(), _>(anyhow::anyhow!("failed after its insert"))
        });
        let third = store.submit(three);
        release.send(()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(held).unwrap();
        let (first, failing, third) =
            runtime.block_on(async { tokio::join!(first, failing, third) });
        assert!(matches!(first.unwrap(), Submitted::New(_)));
        let error = format!("{:#}", failing.unwrap_err());
        assert!(error.contains("cannot do the failing write"), "{error}");
        assert!(error.contains("failed after its insert"), "{error}");
        assert!(matches!(third.unwrap(), Submitted::New(_)));
        drop(store);
        // As stored, read back by a new store: the failed write's insert
        // is gone, the others are there.
        let store = super::tests::store(dir.path(), 10);
        let names: Vec<String> = block(store.unfinished())
            .into_iter()
            .map(|record| record.name)
            .collect();
        assert_eq!(names, ["first", "third"]);
    }

    /// A one-statement write runs without a savepoint: when it fails,
    /// SQLite undoes its statement alone, and the group commits the rest.
    #[test]
    fn a_failed_one_statement_write_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let Submitted::New(kept) = runtime
            .block_on(store.submit(new_task(Some("kept"), None)))
            .unwrap()
        else {
            panic!("a new task");
        };
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let held = store.off_thread(move |_| hold.recv().ok());
        let started = store.attempt_started(kept.seq, 2);
        // Fails at its step (NOT NULL), after matching the row.
        let failing = store.grouped_statement("cannot do the failing write", move |inner| {
            inner
                .conn
                .prepare_cached("UPDATE durable_tasks SET name = NULL WHERE seq = ?1")?
                .execute([kept.seq as i64])?;
            Ok(())
        });
        let three = new_task(Some("third"), None);
        let third = store.submit(three);
        release.send(()).unwrap();
        runtime.block_on(held).unwrap();
        let (started, failing, third) =
            runtime.block_on(async { tokio::join!(started, failing, third) });
        started.unwrap();
        assert!(failing.is_err());
        assert!(matches!(third.unwrap(), Submitted::New(_)));
        drop(store);
        let store = super::tests::store(dir.path(), 10);
        let records = block(store.unfinished());
        let seen: Vec<(String, u32)> = records.into_iter().map(|r| (r.name, r.attempt)).collect();
        assert_eq!(seen, [("kept".to_string(), 2), ("third".to_string(), 1)]);
    }

    fn new_task(name: Option<&str>, key: Option<&str>) -> NewTask {
        NewTask {
            name: name.map(str::to_string),
            worker: WorkerId::Index(1),
            plugin: "kit".into(),
            plugin_version: "1".into(),
            factory: "nap".into(),
            args: r#"{"ms":1}"#.into(),
            retry: Some(RetrySpec {
                attempts: 3,
                backoff: None,
                initial: Some("1ms".into()),
                max: None,
                jitter: None,
            }),
            idempotency_key: key.map(str::to_string),
            queued: None,
            started: true,
            traceparent: None,
            resume: false,
        }
    }

    /// Issue 24, item 11: a row another program changed (an attempt past
    /// u32, text where a number belongs, a state the host never writes)
    /// stopped the start without naming the row, or overflowed, or was
    /// shown as cancelled. Each now fails naming its seq.
    #[test]
    fn a_row_that_does_not_read_back_is_named_by_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let Submitted::New(task) = block(store.submit(new_task(None, None))) else {
                panic!("not new")
            };
            seqs.push(task.seq);
        }
        let edit = |sql: &str, seq: u64| {
            store
                .tasks_op("edit", |inner| {
                    inner.conn.execute(sql, [seq as i64])?;
                    Ok(())
                })
                .unwrap();
        };
        let unfinished = |store: &SqliteStore| block_result(store.unfinished());
        edit(
            "UPDATE durable_tasks SET attempt = 4294967296 WHERE seq = ?1",
            seqs[0],
        );
        let error = format!("{:#}", unfinished(&store).unwrap_err());
        assert!(error.contains(&format!("seq = {}", seqs[0])), "{error}");
        assert!(error.contains("attempt"), "{error}");
        edit(
            "UPDATE durable_tasks SET attempt = 'many' WHERE seq = ?1",
            seqs[0],
        );
        let error = format!("{:#}", unfinished(&store).unwrap_err());
        assert!(error.contains(&format!("seq = {}", seqs[0])), "{error}");
        edit("DELETE FROM durable_tasks WHERE seq = ?1", seqs[0]);
        edit(
            "UPDATE durable_tasks SET state = 'zombie' WHERE seq = ?1",
            seqs[1],
        );
        let error = format!("{:#}", block_result(store.recently_ended(10)).unwrap_err());
        assert!(error.contains(&format!("seq = {}", seqs[1])), "{error}");
        assert!(error.contains("state"), "{error}");
        // The one row left intact reads back.
        edit("DELETE FROM durable_tasks WHERE seq = ?1", seqs[1]);
        assert_eq!(unfinished(&store).unwrap().len(), 1);
    }

    /// An unnamed task is named by the seq its insert gets, also past a
    /// row written from outside with a larger seq than any the host gave,
    /// and after the largest seq was dropped (never given again).
    #[test]
    fn an_unnamed_task_is_named_by_its_seq_whatever_was_written_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let submit = |store: &SqliteStore| {
            let Submitted::New(task) = block(store.submit(new_task(None, None))) else {
                panic!("not new")
            };
            task
        };
        let edit = |sql: &str| {
            store
                .tasks_op("edit", |inner| {
                    inner.conn.execute(sql, [])?;
                    Ok(())
                })
                .unwrap();
        };
        let first = submit(&store);
        assert_eq!(first.name, format!("durable-{}", first.seq));
        edit(
            "INSERT INTO durable_tasks (seq, name, worker, plugin, plugin_version, factory, \
             args, attempt, state, created_ms) VALUES (1000, 'outside', '0', 'p', 'v', 'f', \
             'null', 0, 'done', 0)",
        );
        // sqlite_sequence follows an explicit seq too; set it back, as
        // a file written by another tool could have it.
        edit("UPDATE sqlite_sequence SET seq = 1 WHERE name = 'durable_tasks'");
        let past = submit(&store);
        assert_eq!((past.seq, past.name.as_str()), (1001, "durable-1001"));
        edit("DELETE FROM durable_tasks WHERE seq >= 1000");
        let after = submit(&store);
        assert_eq!((after.seq, after.name.as_str()), (1002, "durable-1002"));
        let names: Vec<(u64, String)> = block_result(store.unfinished())
            .unwrap()
            .into_iter()
            .map(|task| (task.seq, task.name))
            .collect();
        assert_eq!(
            names,
            [
                (first.seq, first.name.clone()),
                (1002, "durable-1002".to_string())
            ]
        );
    }

    #[test]
    fn records_survive_reopening_and_ends_are_final() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = {
            let store = store(dir.path(), 10);
            let Submitted::New(a) = block(store.submit(new_task(Some("a"), None))) else {
                panic!("not new")
            };
            let Submitted::New(b) = block(store.submit(new_task(None, None))) else {
                panic!("not new")
            };
            let Submitted::New(c) = block(store.submit(new_task(Some("c"), None))) else {
                panic!("not new")
            };
            assert_eq!(b.name, format!("durable-{}", b.seq));
            block(store.attempt_started(a.seq, 2));
            let done = Outcome::Done { result: "1".into() };
            assert!(block(store.ended(b.seq, &done, false)));
            // An end is recorded once.
            assert!(!block(store.ended(b.seq, &done, false)));
            // A cancel nobody recorded leaves the task to run again.
            let cancelled = Outcome::Cancelled {
                stage: CancelStage::Cooperative,
            };
            assert!(!block(store.ended(c.seq, &cancelled, true)));
            // Nor a failure on the way out of such a stop; done is done.
            let failed = Outcome::Failed {
                error: "unwrapped `cancelled`".into(),
            };
            assert!(!block(store.ended(c.seq, &failed, true)));
            (a, b, c)
        };
        let store = store(dir.path(), 10);
        let unfinished = block(store.unfinished());
        assert_eq!(
            unfinished
                .iter()
                .map(|r| (r.name.as_str(), r.attempt))
                .collect::<Vec<_>>(),
            vec![("a", 2), ("c", 1)]
        );
        assert_eq!(unfinished[0].retry, a.retry);
        assert_eq!(unfinished[0].worker, WorkerId::Index(1));
        let ended = block(store.recently_ended(10));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].seq, b.seq);
        assert_eq!(ended[0].outcome, Some(Outcome::Done { result: "1".into() }));
        // A recorded cancel: still unfinished (the caller records it as
        // cancelled rather than run it), and its end is recorded.
        block(store.cancel_requested(c.seq));
        assert!(block(store.unfinished())[1].cancel_requested);
        let cancelled = Outcome::Cancelled {
            stage: CancelStage::Forced,
        };
        assert!(block(store.ended(c.seq, &cancelled, true)));
        let ended = block(store.recently_ended(10));
        let c = ended.iter().find(|r| r.seq == c.seq).expect("c ended");
        assert_eq!(c.outcome, Some(cancelled));
    }

    #[test]
    fn an_idempotency_key_is_one_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        let Submitted::New(first) = block(store.submit(new_task(None, Some("k1")))) else {
            panic!("not new")
        };
        let Submitted::Existing(again) = block(store.submit(new_task(Some("other"), Some("k1"))))
        else {
            panic!("a second task was recorded")
        };
        assert_eq!(again.seq, first.seq);
        assert_eq!(block(store.unfinished()).len(), 1);
        // A forgotten task frees its key.
        block(store.forget(first.seq));
        assert!(matches!(
            block(store.submit(new_task(None, Some("k1")))),
            Submitted::New(_)
        ));
    }

    #[test]
    fn ended_records_are_kept_up_to_the_retention_then_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 8);
        for i in 0..30 {
            let Submitted::New(task) = block(store.submit(new_task(None, None))) else {
                panic!("not new")
            };
            let done = Outcome::Done {
                result: i.to_string(),
            };
            assert!(block(store.ended(task.seq, &done, false)));
        }
        let kept = block(store.recently_ended(100));
        assert!((8..=9).contains(&kept.len()), "{}", kept.len());
        assert_eq!(
            kept.last().unwrap().outcome,
            Some(Outcome::Done {
                result: "29".into()
            })
        );
        assert_eq!(block(store.purge_ended()), kept.len() as u64);
        assert!(block(store.recently_ended(100)).is_empty());
    }

    /// A build is kept once, read back whole, and dropped once it neither
    /// serves nor began an unfinished task that resumes.
    #[test]
    fn a_build_is_kept_while_it_serves_or_a_resuming_task_began_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 10);
        block(store.keep_build("kit", "1", vec![1; 1000]));
        block(store.keep_build("kit", "1", vec![9; 10]));
        block(store.keep_build("kit", "2", vec![2; 10]));
        assert_eq!(block(store.kept_build("1")), Some(vec![1; 1000]));
        assert_eq!(block(store.kept_build("3")), None);
        // A resuming task began on build 1 (`new_task`'s version).
        let resuming = NewTask {
            resume: true,
            ..new_task(Some("resumes"), None)
        };
        let Submitted::New(record) = block(store.submit(resuming)) else {
            panic!("not new");
        };
        // 2 serves: neither goes.
        assert_eq!(block(store.drop_builds(vec!["2".into()])), 0);
        // 3 serves now: 2 goes, 1 stays for the task.
        assert_eq!(block(store.drop_builds(vec!["3".into()])), 1);
        assert_eq!(block(store.kept_build("2")), None);
        let outcome = Outcome::Done { result: "1".into() };
        block(store.ended(record.seq, &outcome, false));
        assert_eq!(block(store.drop_builds(vec!["3".into()])), 1);
        assert_eq!(block(store.kept_build("1")), None);
    }
}
