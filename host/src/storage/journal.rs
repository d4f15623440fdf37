//! Journals of durable tasks that resume (`durable = "resume"`): each host
//! call such a task makes, with what it answered, appended before the
//! answer reaches the guest. After a crash the task runs again on the
//! build it began with and its calls are answered from here, in order,
//! until the journal is used up (`crate::journal` replays them).
//!
//! A journal belongs to its task's record ([`super::TaskRecord`]): it is
//! dropped with the record, so an ended task's steps can be read (`taskhost
//! journal TASK`) for as long as its record is kept.

/// One step of a task's journal: a call and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalStep {
    /// Its place in the task's journal, from 0.
    pub index: u32,
    /// What was called, with what decides its answer (`sleep 500`, `kv get
    /// BUCKET KEY`): compared with the call the guest makes on replay.
    pub call: String,
    /// What the call answered, as the interface that made it encodes it.
    pub outcome: Vec<u8>,
    /// When it was made (Unix ms).
    pub at_ms: u64,
    /// How long it took, in microseconds.
    pub micros: u64,
}

impl JournalStep {
    /// What the step costs a journal's bound: its call and its outcome.
    pub fn size(&self) -> usize {
        self.call.len() + self.outcome.len()
    }
}

/// Steps a store appends in the transaction of a call's own effect (a
/// key-value write, `super::KvStore::write_journaled`).
#[derive(Debug)]
pub struct StepsToAppend {
    /// The task's record.
    pub seq: u64,
    /// The steps made before the call and not committed yet.
    pub before: Vec<JournalStep>,
    /// The call's own step, its outcome left for the store to fill in
    /// (none once the task was cancelled: nothing more is recorded).
    pub own: Option<JournalStep>,
    /// The bytes the own step's outcome may take within the journal's
    /// bound.
    pub room: usize,
    /// When the call began: its step's duration is counted to its end.
    pub began: std::time::Instant,
}

/// A backend that keeps no journals (both of taskhost's keep them; one
/// to come may not): a task that resumes is refused there, naming the
/// mode to use instead.
#[derive(Debug, thiserror::Error)]
#[error(
    "this host's storage keeps no journals: `durable = \"resume\"` needs one that does; use \
     `durable = true` (run again from the start) here"
)]
pub struct NoJournals;
