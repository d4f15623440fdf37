//! What queues keep across restarts: the settings an operator changed at
//! run time (limits, paused, draining), and each queue's dead letters (its
//! tasks that failed their last attempt, kept to be retried or discarded).
//! Both live in the host's own file; in a cluster the settings are the
//! cluster's (`cluster::queues::ClusterQueueStore`), the dead letters
//! stay where their tasks failed.

use super::tasks::TaskStoreFuture;
use crate::task::{TaskId, WorkerId};
use serde::{Deserialize, Serialize};

/// A queued task that failed its last attempt: what it takes to submit it
/// again, and how it failed. Stored as this JSON, and answered as it by
/// `GET /v1/dead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The plugin it ran from.
    pub plugin: String,
    /// Its factory.
    pub factory: String,
    /// Its arguments.
    pub args: serde_json::Value,
    /// Its name, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its key in the queue, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its priority.
    #[serde(default)]
    pub priority: i32,
    /// How it was tried again after failing, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::config::RetrySpec>,
    /// How it was started again once it ended, if it was supervised (it
    /// failed past its restart intensity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<crate::config::RestartSpec>,
    /// It was durable: a retry is durable too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub durable: bool,
    /// Its last attempt's error.
    pub error: String,
    /// How many attempts it had.
    pub attempts: u32,
    /// When it failed (RFC 3339, UTC).
    pub failed_at: String,
    /// The worker it ran on.
    pub worker: WorkerId,
    /// Its id there (gone once purged).
    pub task_id: TaskId,
}

/// One dead letter, as stored: its id and queue, and the letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLetter {
    /// Its number, unique in the store, growing.
    pub id: u64,
    /// The queue it failed in.
    pub queue: String,
    /// The letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// A backend for queues' state.
pub trait QueueStore: Send + Sync + 'static {
    /// Every queue's run-time settings (name, JSON), as last set.
    fn queue_settings(&self) -> TaskStoreFuture<'_, Vec<(String, String)>>;

    /// Records queue `name`'s run-time settings (JSON); none forgets them.
    fn set_queue_settings<'a>(
        &'a self,
        name: &'a str,
        settings: Option<&'a str>,
    ) -> TaskStoreFuture<'a, ()>;

    /// Adds a dead letter to `queue`, keeping at most `keep` of its
    /// letters (the oldest go first); the new letter's id and how many
    /// old ones went.
    fn add_dead<'a>(
        &'a self,
        queue: &'a str,
        letter: &'a DeadLetter,
        keep: u64,
    ) -> TaskStoreFuture<'a, (u64, u64)>;

    /// Up to `limit` letters with an id above `after`, of `queue` or of
    /// every queue, oldest first.
    fn dead<'a>(
        &'a self,
        queue: Option<&'a str>,
        after: u64,
        limit: u32,
    ) -> TaskStoreFuture<'a, Vec<StoredLetter>>;

    /// How many letters each queue has.
    fn dead_counts(&self) -> TaskStoreFuture<'_, Vec<(String, u64)>>;

    /// Letter `id`, if it is kept.
    fn dead_letter(&self, id: u64) -> TaskStoreFuture<'_, Option<StoredLetter>>;

    /// Drops letter `id`; whether it was kept.
    fn remove_dead(&self, id: u64) -> TaskStoreFuture<'_, bool>;
}
