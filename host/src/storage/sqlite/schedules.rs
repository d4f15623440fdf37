//! Schedules' progress in the SQLite store: one row per schedule.

use super::SqliteStore;
use crate::storage::schedules::{ScheduleMark, ScheduleStore};
use crate::storage::tasks::TaskStoreFuture;
use rusqlite::{OptionalExtension, params};

impl ScheduleStore for SqliteStore {
    fn schedule_mark<'a>(&'a self, name: &'a str) -> TaskStoreFuture<'a, Option<ScheduleMark>> {
        let name = name.to_owned();
        self.tasks(move |store| {
            store.tasks_op("cannot read a schedule's progress", |inner| {
                Ok(inner
                    .conn
                    .prepare_cached(
                        "SELECT seen_until_ms, paused FROM schedules
                         WHERE name = ?1 AND seen_until_ms IS NOT NULL",
                    )?
                    .query_row([name], |row| {
                        Ok(ScheduleMark {
                            seen_until_ms: row.get::<_, i64>(0)? as u64,
                            paused: row.get::<_, i64>(1)? != 0,
                        })
                    })
                    .optional()?)
            })
        })
    }

    fn set_schedule_mark<'a>(
        &'a self,
        name: &'a str,
        mark: ScheduleMark,
    ) -> TaskStoreFuture<'a, ()> {
        let name = name.to_owned();
        self.tasks(move |store| {
            store
                .execute(
                    "cannot record a schedule's progress",
                    "INSERT INTO schedules (name, seen_until_ms, paused) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name)
                 DO UPDATE SET seen_until_ms = excluded.seen_until_ms, paused = excluded.paused",
                    params![name, mark.seen_until_ms as i64, mark.paused],
                )
                .map(drop)
        })
    }

    fn added_schedules(&self) -> TaskStoreFuture<'_, Vec<(String, String)>> {
        self.tasks(move |store| {
            store.tasks_op("cannot read the schedules added at run time", |inner| {
                let mut statement = inner.conn.prepare_cached(
                    "SELECT name, spec FROM schedules WHERE spec IS NOT NULL ORDER BY name",
                )?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
    }

    fn add_schedule<'a>(&'a self, name: &'a str, spec: &'a str) -> TaskStoreFuture<'a, ()> {
        let (name, spec) = (name.to_owned(), spec.to_owned());
        self.tasks(move |store| {
            store
                .execute(
                    "cannot record an added schedule",
                    "INSERT INTO schedules (name, spec) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                    params![name, spec],
                )
                .map(drop)
        })
    }

    fn remove_schedule<'a>(&'a self, name: &'a str) -> TaskStoreFuture<'a, bool> {
        let name = name.to_owned();
        self.tasks(move |store| {
            store
                .execute(
                    "cannot forget a schedule",
                    "DELETE FROM schedules WHERE name = ?1 AND spec IS NOT NULL",
                    [name],
                )
                .map(|deleted| deleted > 0)
        })
    }
}
