//! Queues' settings and dead letters in the SQLite store.

use super::SqliteStore;
use crate::storage::queues::{DeadLetter, QueueStore, StoredLetter};
use crate::storage::tasks::TaskStoreFuture;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

fn letter(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredLetter> {
    let text: String = row.get(2)?;
    let letter = serde_json::from_str(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(error))
    })?;
    Ok(StoredLetter {
        id: row.get::<_, i64>(0)? as u64,
        queue: row.get(1)?,
        letter,
    })
}

impl QueueStore for SqliteStore {
    fn queue_settings(&self) -> TaskStoreFuture<'_, Vec<(String, String)>> {
        self.tasks(move |store| {
            store.tasks_op("cannot read the queues' settings", |inner| {
                let mut statement = inner
                    .conn
                    .prepare_cached("SELECT name, settings FROM queue_settings ORDER BY name")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
    }

    fn set_queue_settings<'a>(
        &'a self,
        name: &'a str,
        settings: Option<&'a str>,
    ) -> TaskStoreFuture<'a, ()> {
        let name = name.to_owned();
        let settings = settings.map(str::to_owned);
        self.tasks(move |store| match settings {
            Some(settings) => store
                .execute(
                    "cannot record a queue's settings",
                    "INSERT INTO queue_settings (name, settings) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET settings = excluded.settings",
                    params![name, settings],
                )
                .map(drop),
            None => store
                .execute(
                    "cannot forget a queue's settings",
                    "DELETE FROM queue_settings WHERE name = ?1",
                    [name],
                )
                .map(drop),
        })
    }

    fn add_dead<'a>(
        &'a self,
        queue: &'a str,
        letter: &'a DeadLetter,
        keep: u64,
    ) -> TaskStoreFuture<'a, (u64, u64)> {
        let queue = queue.to_owned();
        let letter = serde_json::to_string(letter);
        self.tasks(move |store| {
            let letter = letter?;
            store.tasks_op("cannot record a dead letter", |inner| {
                let tx = inner
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.prepare_cached("INSERT INTO dead_letters (queue, letter) VALUES (?1, ?2)")?
                    .execute(params![queue, letter])?;
                let id = tx.last_insert_rowid() as u64;
                let dropped = tx
                    .prepare_cached(
                        "DELETE FROM dead_letters WHERE queue = ?1 AND id NOT IN
                         (SELECT id FROM dead_letters WHERE queue = ?1
                          ORDER BY id DESC LIMIT ?2)",
                    )?
                    .execute(params![queue, keep as i64])?;
                tx.commit()?;
                Ok((id, dropped as u64))
            })
        })
    }

    fn dead<'a>(
        &'a self,
        queue: Option<&'a str>,
        after: u64,
        limit: u32,
    ) -> TaskStoreFuture<'a, Vec<StoredLetter>> {
        let queue = queue.map(str::to_owned);
        self.tasks(move |store| {
            store.tasks_op("cannot read the dead letters", |inner| {
                let mut statement = inner.conn.prepare_cached(
                    "SELECT id, queue, letter FROM dead_letters
                     WHERE (?1 IS NULL OR queue = ?1) AND id > ?2 ORDER BY id LIMIT ?3",
                )?;
                let rows =
                    statement.query_map(params![queue, after as i64, i64::from(limit)], letter)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
    }

    fn dead_counts(&self) -> TaskStoreFuture<'_, Vec<(String, u64)>> {
        self.tasks(move |store| {
            store.tasks_op("cannot count the dead letters", |inner| {
                let mut statement = inner.conn.prepare_cached(
                    "SELECT queue, count(*) FROM dead_letters GROUP BY queue ORDER BY queue",
                )?;
                let rows = statement
                    .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        })
    }

    fn dead_letter(&self, id: u64) -> TaskStoreFuture<'_, Option<StoredLetter>> {
        self.tasks(move |store| {
            store.tasks_op("cannot read a dead letter", |inner| {
                Ok(inner
                    .conn
                    .prepare_cached("SELECT id, queue, letter FROM dead_letters WHERE id = ?1")?
                    .query_row([id as i64], letter)
                    .optional()?)
            })
        })
    }

    fn remove_dead(&self, id: u64) -> TaskStoreFuture<'_, bool> {
        self.tasks(move |store| {
            store
                .execute(
                    "cannot drop a dead letter",
                    "DELETE FROM dead_letters WHERE id = ?1",
                    [id as i64],
                )
                .map(|deleted| deleted > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::StoreOptions;
    use crate::task::WorkerId;

    fn block<T>(future: TaskStoreFuture<'_, T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
            .unwrap()
    }

    fn letter(error: &str) -> DeadLetter {
        DeadLetter {
            plugin: "p".into(),
            factory: "f".into(),
            args: serde_json::json!({"n": 1}),
            name: None,
            key: Some("k".into()),
            priority: 3,
            retry: None,
            restart: None,
            durable: false,
            error: error.into(),
            attempts: 2,
            failed_at: "2026-12-05T10:00:00.000Z".into(),
            worker: WorkerId::Index(0),
            task_id: 9,
        }
    }

    #[test]
    fn dead_letters_are_kept_up_to_the_bound_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            dir.path(),
            StoreOptions {
                kv: crate::storage::KvLimits {
                    key_bytes: 16,
                    value_bytes: 64,
                    keys_per_bucket: 3,
                    bytes_per_plugin: 100,
                },
                fsync: false,
                keep_ended: 10,
            },
        )
        .unwrap();
        let (first, dropped) = block(store.add_dead("q", &letter("one"), 2));
        assert_eq!(dropped, 0);
        block(store.add_dead("other", &letter("elsewhere"), 2));
        block(store.add_dead("q", &letter("two"), 2));
        let (_, dropped) = block(store.add_dead("q", &letter("three"), 2));
        assert_eq!(dropped, 1, "the oldest of q went");
        let kept = block(store.dead(Some("q"), 0, 10));
        let errors: Vec<&str> = kept.iter().map(|l| l.letter.error.as_str()).collect();
        assert_eq!(errors, ["two", "three"]);
        assert_eq!(kept[0].letter, letter("two"));
        assert!(block(store.dead_letter(first)).is_none());
        let page = block(store.dead(None, kept[0].id, 1));
        assert_eq!(
            page[0].letter.error, "three",
            "after and limit page through"
        );
        assert_eq!(
            block(store.dead_counts()),
            [("other".to_string(), 1), ("q".to_string(), 2)]
        );
        assert!(block(store.remove_dead(kept[0].id)));
        assert!(!block(store.remove_dead(kept[0].id)));

        block(store.set_queue_settings("q", Some(r#"{"paused":true}"#)));
        assert_eq!(
            block(store.queue_settings()),
            [("q".to_string(), r#"{"paused":true}"#.to_string())]
        );
        block(store.set_queue_settings("q", None));
        assert!(block(store.queue_settings()).is_empty());
    }
}
