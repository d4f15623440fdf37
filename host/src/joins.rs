//! Waiting for tasks to end and taking what they ended with: a guest's
//! `join`, `join-all` and `join-any`, `POST /v1/tasks/wait` and
//! `taskhost wait`.
//!
//! A wait wakes on the task's end (the state its registry sets on the
//! task's signal), it never polls; waiting on a task that has ended
//! returns at once. Waiting is all it does: a wait that gives up (its
//! timeout, its caller cancelled) leaves the task as it is.

use crate::registry::{Listing, TaskHandle};
use crate::task::{TaskId, TaskInfo, TaskState};
use std::sync::Arc;

/// The most tasks one call waits for: a join-all of more holds that many
/// waits, and no worker holds more tasks than its `tasks_per_worker`.
pub(crate) const MAX_JOINED: usize = 10_000;

/// A task someone waits for: its handle, its record when it was found (what
/// is answered if it is dropped from its registry before its end can be
/// read), and the worker whose registry lists it.
pub(crate) struct Awaited {
    worker: Arc<dyn Listing>,
    handle: TaskHandle,
    seen: TaskInfo,
}

impl Awaited {
    /// Task `id`, if `worker` lists it.
    pub(crate) fn by_id(worker: Arc<dyn Listing>, id: TaskId) -> Option<Awaited> {
        let handle = worker.registry().handle_of(id)?;
        let seen = worker.registry().get(id)?;
        Some(Awaited {
            worker,
            handle,
            seen,
        })
    }

    /// The task `worker` lists as `name`.
    pub(crate) fn by_name(worker: Arc<dyn Listing>, name: &str) -> Option<Awaited> {
        let handle = worker.registry().handle_by_name(name)?;
        let seen = worker.registry().get(handle.id)?;
        Some(Awaited {
            worker,
            handle,
            seen,
        })
    }

    /// Its record when it was found.
    pub(crate) fn seen(&self) -> &TaskInfo {
        &self.seen
    }

    /// Resolves with the task's record once it has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub(crate) async fn ended(&mut self) -> TaskInfo {
        self.handle.ended().await;
        self.end()
    }

    /// Its record now that it has ended. Dropped from its registry since
    /// (purged, or pushed out by `ended_tasks_per_worker`), it is the
    /// record seen when it was found, with the state it ended in; its
    /// result went with it.
    fn end(&self) -> TaskInfo {
        if let Some(info) = self.worker.registry().get(self.handle.id)
            && info.state.is_ended()
        {
            return info;
        }
        let mut info = self.seen.clone();
        // No end state: it was dropped before it ended (a task refused as
        // it started): it will not run.
        info.state = self.handle.end_state().unwrap_or(TaskState::Cancelled);
        info.ended_at.get_or_insert_with(std::time::SystemTime::now);
        info.outcome = None;
        info
    }
}
