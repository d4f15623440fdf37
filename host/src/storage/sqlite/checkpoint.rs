//! WAL checkpoints on a connection and thread of their own.
//!
//! SQLite's own checkpoint runs inside the commit that takes the WAL past
//! 1,000 pages, on the committing thread: here the store's thread, which
//! then waits for the disk (a checkpoint syncs the WAL and the database
//! file even with `synchronous = NORMAL`) while writes queue behind it. A
//! tenth of that thread's context switches in the queues bench's durable
//! rows were such waits (`perf sched`). So the writer's connection does no
//! checkpoint of its own: after a commit that left the WAL past
//! [`ASK_AT`] pages, it wakes this module's thread, which checkpoints
//! PASSIVE from its own connection while the writer goes on.
//!
//! A PASSIVE checkpoint copies what was committed when it began; under a
//! steady stream of writes it may never catch up, and the WAL, which starts
//! over only once wholly copied, would grow without end. Past
//! [`WRITER_AT`] pages the writer therefore checkpoints itself, as SQLite
//! would: with no write in between, that one catches up, and the next
//! write starts the WAL over. The WAL is bounded by that, about 40 MB.

use super::Inner;
use anyhow::{Context, Result};
use rusqlite::Connection;
use std::cell::Cell;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// WAL pages past which the checkpoint thread is woken: SQLite's own
/// `wal_autocheckpoint` default.
const ASK_AT: i32 = 1_000;

/// WAL pages past which the writer checkpoints itself (see the module
/// docs): 10,000 pages of 4 KiB.
const WRITER_AT: i32 = 10_000;

thread_local! {
    /// The WAL's size in pages after the last commit on this thread, as
    /// SQLite's WAL hook reports it. A thread-local because the hook takes
    /// a plain function, and every commit of a store runs on its own thread.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The checkpoint thread's wake-up; it ends when this is dropped.
pub(super) struct Checkpoints {
    wake: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpoints {
    /// Turns off `writer`'s own checkpoints and starts the thread that
    /// checkpoints the database at `path` instead.
    pub(super) fn start(writer: &Connection, path: &Path) -> Result<Checkpoints> {
        let file = path.display();
        let own = Connection::open(path)
            .with_context(|| format!("{file}: cannot open a connection for checkpoints"))?;
        own.busy_timeout(Duration::from_secs(5))
            .with_context(|| format!("{file}: cannot set the checkpoints' busy timeout"))?;
        // Replaces SQLite's own hook, which is what runs its checkpoints.
        writer.wal_hook(Some(note_wal_pages));
        let (wake, woken) = sync_channel(1);
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("taskhost-checkpoint".into())
            .spawn(move || checkpoint_when_woken(&own, &path, &woken))
            .with_context(|| format!("{file}: cannot start the checkpoint thread"))?;
        Ok(Checkpoints {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// After a call on the store's thread: wakes the checkpoint thread
    /// once the WAL has grown past [`ASK_AT`], or checkpoints on the
    /// writer's connection itself past [`WRITER_AT`].
    pub(super) fn after_call(&self, writer: &Mutex<Inner>, path: &Path) {
        let pages = WAL_PAGES.get();
        if pages >= WRITER_AT {
            WAL_PAGES.set(0);
            let inner = writer.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = checkpoint(&inner.conn) {
                tracing::warn!("database {}: checkpoint failed: {e}", path.display());
            }
        } else if pages >= ASK_AT {
            WAL_PAGES.set(0);
            // Full: it is asked already. Gone: it panicked, and the
            // writer's own checkpoints past WRITER_AT still bound the WAL.
            let _ = self.wake.as_ref().map(|wake| wake.try_send(()));
        }
    }
}

impl Drop for Checkpoints {
    /// Ends the thread and waits for it, so its connection is closed when
    /// the store is: a host started next on the directory finds nothing
    /// of this one still open.
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint_when_woken(conn: &Connection, path: &Path, woken: &Receiver<()>) {
    while woken.recv().is_ok() {
        if let Err(e) = checkpoint(conn) {
            tracing::warn!("database {}: checkpoint failed: {e}", path.display());
        }
    }
}

/// Copies what the WAL holds into the database file, without waiting for
/// the writer.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
