//! A resuming task's journal at run time (`durable = "resume"`): the host
//! calls it made, read back from storage when it starts again, answer its
//! calls in order (replay) until they are used up; from then on every call
//! is performed and appended before its answer reaches the guest.
//!
//! Three kinds of steps:
//! - **calls** (`sleep`, key-value, HTTP, ...), whose answer the guest acts
//!   on: appended and committed before the answer is given. On replay the
//!   guest must make the same call at the same place, or the task fails
//!   `nondeterministic`, naming the step and both calls;
//! - **clock readings** (`wasi:clocks`' wall and monotonic clocks), read
//!   back on replay each clock in its own order, apart from the calls: a
//!   language's engine reads its clocks for its own ends (timers, its
//!   collector) in an order the guest's code does not decide;
//! - **the seed** of the task's randomness, drawn once: WASI's generators
//!   are seeded from it, so random values are the same on replay.
//!
//! Readings and the seed are buffered and committed with the next call: a
//! value no call depended on may differ after a crash, as if it had never
//! been read.
//!
//! A journal holds at most `[limits] journal_bytes` (calls and answers);
//! an append past it fails the task, naming the limit.

use crate::private_files::hex;
use crate::storage::{JournalStep, StepsToAppend, TaskStore};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The seed's step: drawn when the task first reaches WASI, and read
/// back whatever its place.
const SEED: &str = "seed";

/// A wall-clock reading's step.
pub(crate) const WALL: &str = "clock wall";

/// A monotonic-clock reading's step.
pub(crate) const MONOTONIC: &str = "clock monotonic";

/// `wasi:clocks/wall-clock` of a resuming task: its readings come from
/// the journal while it replays.
pub(crate) struct WallClock(pub(crate) Arc<Journal>);

impl wasmtime_wasi::HostWallClock for WallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }

    fn now(&self) -> std::time::Duration {
        let live = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        std::time::Duration::from_nanos(self.0.clock(WALL, live))
    }
}

/// `wasi:clocks/monotonic-clock` of a resuming task.
pub(crate) struct MonotonicClock {
    pub(crate) journal: Arc<Journal>,
    pub(crate) zero: Instant,
}

impl wasmtime_wasi::HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let live = self.zero.elapsed().as_nanos() as u64;
        self.journal.clock(MONOTONIC, live)
    }
}

/// Why a journaled call cannot go on: the task fails with this.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum JournalError {
    /// The guest made another call than the one recorded at this step.
    #[error(
        "nondeterministic: step {step} of the journal recorded `{recorded}`, and the task now \
         made `{now}`: a task that resumes must make the same host calls in the same order \
         on replay (randomness, clocks and answers come from the journal; anything else it \
         reads must not change what it calls)"
    )]
    Nondeterministic {
        step: u32,
        recorded: String,
        now: String,
    },
    /// The journal is full.
    #[error(
        "limit: the task's journal holds at most {limit} bytes ([limits] journal_bytes) and \
         step {step} (`{call}`) would take it past that: raise the limit, or make fewer or \
         smaller host calls"
    )]
    Limit {
        limit: usize,
        step: u32,
        call: String,
    },
    /// An effect begun before a crash has no recorded answer, and its
    /// policy says not to make it again.
    #[error(
        "uncertain: step {step} of the journal (`{call}`) was begun before the host stopped and \
         its answer was not recorded, so it may or may not have taken effect; {policy} says not \
         to make it again (`resend` makes it again under the same idempotency key)"
    )]
    Uncertain {
        step: u32,
        call: String,
        policy: &'static str,
    },
    /// The task was cancelled: a resuming task makes no more effects
    /// (one made now would not be recorded, and would be made again when
    /// it resumes).
    #[error(
        "cancelled: a resuming task makes no more writes, requests or starts once it is \
         cancelled (they would be made again when it resumes)"
    )]
    Cancelled,
    /// The step could not be committed: the call was not answered.
    #[error("the task's journal could not be written: {0}")]
    Storage(String),
}

/// One task's journal.
pub(crate) struct Journal {
    /// The task's record.
    seq: u64,
    store: Arc<dyn TaskStore>,
    /// `[limits] journal_bytes`.
    limit: usize,
    metrics: crate::metrics::JournalMetrics,
    /// The task's cancel: once it fires (an operator's cancel, the host
    /// stopping) nothing more is recorded, so a resumed run replays only
    /// what the task did before it was stopped.
    cancel: Arc<crate::task::CancelSignal>,
    state: Mutex<State>,
    /// Held by a commit until its steps are stored: a commit that finds
    /// nothing left to take knows that whatever took its steps has
    /// stored them.
    committing: tokio::sync::Mutex<()>,
}

struct State {
    /// Recorded calls not replayed yet, in order.
    recorded: VecDeque<JournalStep>,
    /// Recorded readings of each clock not replayed yet, in order: apart
    /// from the calls, since a language's engine reads its clocks for its
    /// own ends (its timers, its collector) in an order of its own.
    walls: VecDeque<u64>,
    monotonics: VecDeque<u64>,
    /// Recorded answers to effects begun concurrently (HTTP requests),
    /// by their intent's step: an answer is recorded when it comes, so
    /// answers follow their intents, not one another, in the journal.
    answers: HashMap<u32, JournalStep>,
    /// The next step's index.
    next: u32,
    /// Steps made but not committed (the seed), written with the next call.
    pending: Vec<JournalStep>,
    /// What the journal holds, pending steps included.
    bytes: usize,
    /// The seed of the task's randomness.
    seed: Option<[u8; 32]>,
    /// The last monotonic reading replayed, and what live readings add
    /// after the replay (a new process's clock may read less).
    last_monotonic: u64,
    monotonic_offset: Option<u64>,
    /// What stopped the journal: every later call fails with it, and the
    /// attempt fails with it once it ends (a call whose error reached the
    /// guest as an interface's error, an HTTP failure, still fails the
    /// task).
    failed: Option<JournalError>,
}

/// The wall clock, in Unix ms.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Journal {
    /// The journal of task `seq`, as recorded so far.
    pub(crate) async fn open(
        store: Arc<dyn TaskStore>,
        seq: u64,
        limit: usize,
        metrics: crate::metrics::JournalMetrics,
        cancel: Arc<crate::task::CancelSignal>,
    ) -> anyhow::Result<Arc<Journal>> {
        let steps = store.steps(seq).await?;
        let bytes = steps.iter().map(JournalStep::size).sum();
        let next = steps.last().map_or(0, |step| step.index + 1);
        // The seed is drawn when the task first reaches WASI, wherever
        // that is among its calls, and clocks are read back apart: both
        // are taken out of the calls' replay.
        let mut seed = None;
        let (mut walls, mut monotonics) = (VecDeque::new(), VecDeque::new());
        let reading = |step: &JournalStep| {
            <[u8; 8]>::try_from(step.outcome.as_slice())
                .map(u64::from_le_bytes)
                .ok()
        };
        let mut answers = HashMap::new();
        let mut recorded = VecDeque::new();
        for step in steps {
            match step.call.as_str() {
                SEED => seed = <[u8; 32]>::try_from(step.outcome.as_slice()).ok(),
                WALL => walls.extend(reading(&step)),
                MONOTONIC => monotonics.extend(reading(&step)),
                call => match answer_of(call) {
                    Some(intent) => drop(answers.insert(intent, step)),
                    None => recorded.push_back(step),
                },
            }
        }
        Ok(Arc::new(Journal {
            seq,
            store,
            limit,
            metrics,
            cancel,
            committing: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                recorded,
                walls,
                monotonics,
                answers,
                next,
                pending: Vec::new(),
                bytes,
                seed,
                last_monotonic: 0,
                monotonic_offset: None,
                failed: None,
            }),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The seed of the task's randomness: the recorded one, or a new one
    /// (recorded with the next call).
    pub(crate) fn seed(&self) -> [u8; 32] {
        let mut state = self.state();
        if let Some(seed) = state.seed {
            return seed;
        }
        let mut seed = [0u8; 32];
        if getrandom::fill(&mut seed).is_err() {
            // No OS randomness: the time still differs per task.
            seed[..16].copy_from_slice(
                &SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
                    .to_le_bytes(),
            );
            seed[16..24].copy_from_slice(&self.seq.to_le_bytes());
        }
        state.seed = Some(seed);
        let step = JournalStep {
            index: state.next,
            call: SEED.into(),
            outcome: seed.to_vec(),
            at_ms: now_ms(),
            micros: 0,
        };
        state.next += 1;
        state.bytes += step.size();
        state.pending.push(step);
        seed
    }

    /// A clock reading (`kind`: `clock wall` or `clock monotonic`, in
    /// nanoseconds): while that clock's recorded readings last, the next
    /// one; then `live`, kept as a step that is committed with the next
    /// call (a reading no call depended on may differ after a crash). A
    /// monotonic reading never goes back across the switch to live.
    pub(crate) fn clock(&self, kind: &'static str, live: u64) -> u64 {
        let mut state = self.state();
        if state.failed.is_some() {
            return live;
        }
        let recorded = match kind {
            MONOTONIC => state.monotonics.pop_front(),
            _ => state.walls.pop_front(),
        };
        if let Some(value) = recorded {
            self.metrics.replayed.inc();
            if kind == MONOTONIC {
                state.last_monotonic = value;
            }
            return value;
        }
        let value = if kind == MONOTONIC {
            let behind = state.last_monotonic.saturating_sub(live);
            let offset = *state.monotonic_offset.get_or_insert(behind);
            live.saturating_add(offset)
        } else {
            live
        };
        drop(state);
        // A full journal stops it (kept in `failed`); the reading stands.
        let _ = self.defer(kind.into(), value.to_le_bytes().to_vec(), Instant::now());
        value
    }

    /// The recorded answer to `call` (and its step's index) when the
    /// journal still has steps to replay; none when the task runs live
    /// (then the caller performs the call and [records](Journal::record)
    /// it).
    pub(crate) fn replay(&self, call: &str) -> Result<Option<(u32, Vec<u8>)>, JournalError> {
        let mut state = self.state();
        if let Some(failed) = &state.failed {
            return Err(failed.clone());
        }
        let Some(step) = state.recorded.front() else {
            return Ok(None);
        };
        if step.call != call {
            let error = JournalError::Nondeterministic {
                step: step.index,
                recorded: step.call.clone(),
                now: call.to_string(),
            };
            state.failed = Some(error.clone());
            return Err(error);
        }
        let step = state.recorded.pop_front().expect("a recorded step");
        self.metrics.replayed.inc();
        Ok(Some((step.index, step.outcome)))
    }

    /// Appends `call` and its `outcome` (with any step made before it)
    /// and waits until they are committed; `began` is when the call was
    /// made. Returns the step's index.
    pub(crate) async fn record(
        &self,
        call: String,
        outcome: Vec<u8>,
        began: Instant,
    ) -> Result<u32, JournalError> {
        let index = self.defer(call, outcome, began)?;
        self.commit().await?;
        Ok(index)
    }

    /// Records `call`, a write whose store appends the journal's steps in
    /// the transaction that makes it (`KvStore::write_journaled`), so a
    /// crash keeps both or neither: `write` gets the steps (those made
    /// before it, and its own, whose outcome the store fills in) and
    /// starts the write; it answers with the call's answer and its
    /// outcome's size, none when that did not fit (nothing was written).
    pub(crate) async fn record_within<T, F>(
        &self,
        call: String,
        write: impl FnOnce(StepsToAppend) -> F,
    ) -> Result<T, JournalError>
    where
        F: std::future::Future<Output = Result<(T, Option<usize>), String>>,
    {
        let began = Instant::now();
        let _turn = self.committing.lock().await;
        // Started under the lock, as a commit is, so steps reach the
        // store in their order.
        let (written, index, count) = {
            let mut state = self.state();
            if let Some(failed) = &state.failed {
                return Err(failed.clone());
            }
            if self.cancel.is_cancelled() {
                return Err(JournalError::Cancelled);
            }
            let index = state.next;
            let own = Some(JournalStep {
                index,
                call: call.clone(),
                outcome: Vec::new(),
                at_ms: now_ms(),
                micros: 0,
            });
            let used = state.bytes + call.len();
            if used > self.limit {
                let error = JournalError::Limit {
                    limit: self.limit,
                    step: index,
                    call,
                };
                state.failed = Some(error.clone());
                return Err(error);
            }
            state.next += 1;
            let before = std::mem::take(&mut state.pending);
            let count = before.len() as u64 + 1;
            let steps = StepsToAppend {
                seq: self.seq,
                before,
                own,
                room: self.limit - used.min(self.limit),
                began,
            };
            (write(steps), index, count)
        };
        match written.await {
            Ok((answer, Some(bytes))) => {
                self.state().bytes += call.len() + bytes;
                self.metrics.appended.inc_by(count);
                Ok(answer)
            }
            Ok((_, None)) => {
                let error = JournalError::Limit {
                    limit: self.limit,
                    step: index,
                    call,
                };
                self.state().failed = Some(error.clone());
                Err(error)
            }
            Err(error) => {
                let error = JournalError::Storage(error);
                self.state().failed = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Commits the steps made and not committed yet, and waits for it.
    pub(crate) async fn commit(&self) -> Result<(), JournalError> {
        let _turn = self.committing.lock().await;
        // Queued under the lock, so steps reach the store in their order
        // whichever thread records them.
        let (appended, count) = {
            let mut state = self.state();
            if let Some(failed) = &state.failed {
                return Err(failed.clone());
            }
            if state.pending.is_empty() {
                return Ok(());
            }
            let steps = std::mem::take(&mut state.pending);
            let count = steps.len() as u64;
            (self.store.append_steps(self.seq, steps), count)
        };
        if let Err(error) = appended.await {
            let error = JournalError::Storage(format!("{error:#}"));
            self.state().failed = Some(error.clone());
            return Err(error);
        }
        self.metrics.appended.inc_by(count);
        Ok(())
    }

    /// Appends a read's step (`call` and its `outcome`) without waiting:
    /// it is committed with the next call that waits. A read changes
    /// nothing outside the task, so only what follows it needs it
    /// recorded first; a crash before then loses a read nothing depended
    /// on.
    /// Returns the step's index.
    pub(crate) fn defer(
        &self,
        call: String,
        outcome: Vec<u8>,
        began: Instant,
    ) -> Result<u32, JournalError> {
        let mut state = self.state();
        if let Some(failed) = &state.failed {
            return Err(failed.clone());
        }
        if self.cancel.is_cancelled() {
            return Ok(state.next);
        }
        let step = JournalStep {
            index: state.next,
            call,
            outcome,
            at_ms: now_ms(),
            micros: began.elapsed().as_micros() as u64,
        };
        if state.bytes + step.size() > self.limit {
            let error = JournalError::Limit {
                limit: self.limit,
                step: step.index,
                call: step.call,
            };
            state.failed = Some(error.clone());
            return Err(error);
        }
        state.next += 1;
        state.bytes += step.size();
        let index = step.index;
        state.pending.push(step);
        Ok(index)
    }

    /// Journals the intent to make an effect outside the task (`call`:
    /// an HTTP request, a task's start) before it is made, and returns
    /// its mark, `STEP-NONCE`: under the task's idempotency key, the
    /// effect's own key. Read back on replay, so an effect the host may
    /// have made before a crash is made again under the same key (and
    /// taken once by whoever honours it); a retry's journal starts
    /// afresh, so its effects get marks of their own.
    /// Whether the intent was replayed comes along: one replayed whose
    /// effect's answer is not recorded next is *uncertain*.
    pub(crate) async fn intent(&self, call: String) -> Result<Intent, JournalError> {
        let intent = self.reserve(call)?;
        self.commit().await?;
        Ok(intent)
    }

    /// [`Journal::intent`] in two halves, for effects begun concurrently
    /// (HTTP requests): the intent takes its place now, in the order the
    /// guest began them, and is [committed](Journal::commit) before the
    /// effect is made.
    pub(crate) fn reserve(&self, call: String) -> Result<Intent, JournalError> {
        let (step, nonce, replayed) = match self.replay(&call)? {
            Some((step, nonce)) => (step, nonce, true),
            None if self.cancel.is_cancelled() => return Err(JournalError::Cancelled),
            None => {
                let mut nonce = [0u8; 8];
                let _ = getrandom::fill(&mut nonce);
                let step = self.defer(call.clone(), nonce.to_vec(), Instant::now())?;
                (step, nonce.to_vec(), false)
            }
        };
        Ok(Intent {
            mark: format!("{step}-{}", hex(&nonce)),
            step,
            call,
            replayed,
        })
    }

    /// The recorded answer to the effect whose intent is step `intent`,
    /// `call` naming it ([`answer_call`]); none if none was recorded. An
    /// answer recorded for another call (the same request with another
    /// body) stops the journal `nondeterministic`.
    pub(crate) fn replay_answer(
        &self,
        intent: u32,
        call: &str,
    ) -> Result<Option<Vec<u8>>, JournalError> {
        let mut state = self.state();
        if let Some(failed) = &state.failed {
            return Err(failed.clone());
        }
        let Some(step) = state.answers.remove(&intent) else {
            return Ok(None);
        };
        if step.call != call {
            let error = JournalError::Nondeterministic {
                step: step.index,
                recorded: step.call,
                now: call.to_string(),
            };
            state.failed = Some(error.clone());
            return Err(error);
        }
        self.metrics.replayed.inc();
        Ok(Some(step.outcome))
    }

    /// Stops the journal with `error` (an uncertain effect its policy
    /// will not make again): the call and the attempt fail with it.
    pub(crate) fn stop(&self, error: JournalError) -> JournalError {
        self.state().failed.get_or_insert(error).clone()
    }

    /// What stopped the journal, if anything did: the attempt fails with it.
    pub(crate) fn failed(&self) -> Option<JournalError> {
        self.state().failed.clone()
    }
}

/// The prefix of an answer step's call ([`answer_call`]).
const ANSWER: &str = "answer of step ";

/// The call of the answer to the effect whose intent is step `intent`:
/// `what` names what decides the answer (an HTTP request's body digest).
pub(crate) fn answer_call(intent: u32, what: &str) -> String {
    format!("{ANSWER}{intent} {what}")
}

/// The intent step an answer step's call names, if it is one.
fn answer_of(call: &str) -> Option<u32> {
    call.strip_prefix(ANSWER)?.split(' ').next()?.parse().ok()
}

/// An effect's journaled intent ([`Journal::intent`]).
pub(crate) struct Intent {
    /// `STEP-NONCE`: the effect's key under the task's.
    pub(crate) mark: String,
    /// The intent's step, and its call.
    pub(crate) step: u32,
    pub(crate) call: String,
    /// Read back from the journal: the effect was begun before a crash.
    pub(crate) replayed: bool,
}

/// The first 16 hex digits of `bytes`' SHA-256: what a journaled call
/// names of a value, a body or arguments it carries, so the same call
/// with other data at the same place of a replay is a different call.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes)[..8])
}

/// `app.sleep(ms)` of a resuming task: the time it ends is journaled
/// before it begins, so a sleep a crash cut short lasts only what was
/// left of it after the restart, and one that ended is not slept again.
pub(crate) async fn sleep_until(journal: &Journal, ms: u64) -> Result<u64, JournalError> {
    // A sleep changes nothing outside: once cancelled it is not recorded,
    // and the sleep itself answers `cancelled`.
    if journal.cancel.is_cancelled() && journal.state().recorded.is_empty() {
        return Ok(ms);
    }
    journaled(
        journal,
        format!("sleep {ms}"),
        async { now_ms().saturating_add(ms) },
        |until| until.to_string().into_bytes(),
        |bytes| std::str::from_utf8(bytes).ok()?.parse().ok(),
    )
    .await
    .map(|until| until.saturating_sub(now_ms()))
}

/// Runs a journaled read (a call that changes nothing outside the task):
/// its recorded answer when replaying, else `live`'s, recorded with the
/// next call that waits ([`Journal::defer`]).
pub(crate) async fn journaled_read<T, F>(
    journal: &Journal,
    call: String,
    live: F,
    encode: impl FnOnce(&T) -> Vec<u8>,
    decode: impl FnOnce(&[u8]) -> Option<T>,
) -> Result<T, JournalError>
where
    F: std::future::Future<Output = T>,
{
    answered(journal, call, live, encode, decode, false).await
}

/// Runs a journaled call: its recorded answer when replaying (`decode`
/// reads it), else `live`'s, recorded (`encode` writes it) before it is
/// returned.
pub(crate) async fn journaled<T, F>(
    journal: &Journal,
    call: String,
    live: F,
    encode: impl FnOnce(&T) -> Vec<u8>,
    decode: impl FnOnce(&[u8]) -> Option<T>,
) -> Result<T, JournalError>
where
    F: std::future::Future<Output = T>,
{
    answered(journal, call, live, encode, decode, true).await
}

/// The recorded answer to `call` (`decode` reads it) while the journal
/// replays; none once it runs live.
pub(crate) fn replayed<T>(
    journal: &Journal,
    call: &str,
    decode: impl FnOnce(&[u8]) -> Option<T>,
) -> Result<Option<T>, JournalError> {
    let Some((_, recorded)) = journal.replay(call)? else {
        return Ok(None);
    };
    decode(&recorded).map(Some).ok_or_else(|| {
        JournalError::Storage(format!(
            "the recorded answer to `{call}` does not read back (the journal was changed \
             outside taskhost)"
        ))
    })
}

/// [`journaled`] (`wait`: committed before it returns) or
/// [`journaled_read`].
async fn answered<T, F>(
    journal: &Journal,
    call: String,
    live: F,
    encode: impl FnOnce(&T) -> Vec<u8>,
    decode: impl FnOnce(&[u8]) -> Option<T>,
    wait: bool,
) -> Result<T, JournalError>
where
    F: std::future::Future<Output = T>,
{
    if let Some(answer) = replayed(journal, &call, decode)? {
        return Ok(answer);
    }
    // An effect after a cancel would not be recorded, and would be made
    // again when the task resumes.
    if wait && journal.cancel.is_cancelled() {
        return Err(JournalError::Cancelled);
    }
    let began = Instant::now();
    let answer = live.await;
    match wait {
        true => journal.record(call, encode(&answer), began).await?,
        false => journal.defer(call, encode(&answer), began)?,
    };
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KvLimits, NewTask, SqliteStore, StoreOptions, Submitted};

    fn store(dir: &std::path::Path) -> Arc<dyn TaskStore> {
        let kv = KvLimits {
            key_bytes: 16,
            value_bytes: 16,
            keys_per_bucket: 4,
            bytes_per_plugin: 64,
        };
        let options = StoreOptions {
            kv,
            fsync: false,
            keep_ended: 10,
        };
        Arc::new(SqliteStore::open(dir, options).unwrap())
    }

    async fn task(store: &Arc<dyn TaskStore>) -> u64 {
        let task = NewTask {
            name: None,
            worker: crate::task::WorkerId::Index(0),
            plugin: "p".into(),
            plugin_version: "v".into(),
            factory: "f".into(),
            args: "null".into(),
            retry: None,
            idempotency_key: None,
            queued: None,
            started: true,
            traceparent: None,
            resume: true,
        };
        match store.submit(task).await.unwrap() {
            Submitted::New(record) => record.seq,
            other => panic!("{other:?}"),
        }
    }

    /// The journal of task `seq` as a run of it opens it (1 MiB).
    async fn reopen(store: &Arc<dyn TaskStore>, seq: u64) -> Arc<Journal> {
        Journal::open(
            store.clone(),
            seq,
            1 << 20,
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap()
    }

    async fn call(journal: &Journal, call: &str, answer: &str) -> Result<String, JournalError> {
        let answer = answer.to_string();
        journaled(
            journal,
            call.into(),
            async { answer },
            |a| a.as_bytes().to_vec(),
            |b| String::from_utf8(b.to_vec()).ok(),
        )
        .await
    }

    #[tokio::test]
    async fn a_journal_replays_its_calls_then_records_and_names_a_call_that_differs() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let seq = task(&store).await;
        // The first run: a seed, two calls; a third is cut off by a crash.
        let first = reopen(&store, seq).await;
        let seed = first.seed();
        assert_eq!(call(&first, "kv get a", "1").await.unwrap(), "1");
        assert_eq!(call(&first, "sleep 5", "99").await.unwrap(), "99");
        // The run after it: the same seed and answers, whatever live says.
        let second = reopen(&store, seq).await;
        assert_eq!(second.seed(), seed);
        assert_eq!(call(&second, "kv get a", "2").await.unwrap(), "1");
        assert_eq!(call(&second, "sleep 5", "100").await.unwrap(), "99");
        // Used up: live, and recorded.
        assert_eq!(call(&second, "kv get b", "3").await.unwrap(), "3");
        let steps: Vec<String> = store
            .steps(seq)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.call)
            .collect();
        assert_eq!(steps, ["seed", "kv get a", "sleep 5", "kv get b"]);
        // A third run that calls something else at step 2 fails there.
        let third = reopen(&store, seq).await;
        call(&third, "kv get a", "").await.unwrap();
        let error = call(&third, "sleep 6", "").await.unwrap_err();
        assert!(
            matches!(&error, JournalError::Nondeterministic { step: 2, .. }),
            "{error}"
        );
        let said = error.to_string();
        assert!(
            said.contains("sleep 5") && said.contains("sleep 6"),
            "{said}"
        );
    }

    #[tokio::test]
    async fn clock_readings_replay_in_order_and_the_monotonic_clock_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let seq = task(&store).await;
        let first = reopen(&store, seq).await;
        assert_eq!(first.clock(WALL, 1_000), 1_000);
        assert_eq!(first.clock(MONOTONIC, 500), 500);
        // Readings are committed with the next call.
        call(&first, "sleep 1", "0").await.unwrap();
        // A new process: its clocks read otherwise.
        let second = reopen(&store, seq).await;
        assert_eq!(second.clock(WALL, 9_999), 1_000);
        assert_eq!(second.clock(MONOTONIC, 20), 500);
        call(&second, "sleep 1", "x").await.unwrap();
        // Live again: the monotonic clock goes on from where it was.
        assert_eq!(second.clock(MONOTONIC, 30), 500);
        assert_eq!(second.clock(MONOTONIC, 40), 510);
        assert_eq!(second.clock(WALL, 9_999), 9_999);
        // Each clock is read back in its own order, whatever the order
        // between them (an engine reads its clocks for its own ends).
        let third = reopen(&store, seq).await;
        assert_eq!(third.clock(MONOTONIC, 7), 500);
        assert_eq!(third.clock(WALL, 7), 1_000);
        assert!(third.failed().is_none());
    }

    #[tokio::test]
    async fn a_seed_drawn_after_other_calls_is_read_back_and_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let seq = task(&store).await;
        let first = reopen(&store, seq).await;
        call(&first, "sleep 1", "a").await.unwrap();
        let seed = first.seed();
        call(&first, "sleep 2", "b").await.unwrap();
        let second = reopen(&store, seq).await;
        assert_eq!(call(&second, "sleep 1", "").await.unwrap(), "a");
        assert_eq!(second.seed(), seed);
        assert_eq!(call(&second, "sleep 2", "").await.unwrap(), "b");
    }

    #[tokio::test]
    async fn nothing_is_recorded_once_the_task_is_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let seq = task(&store).await;
        let cancel = Arc::new(crate::task::CancelSignal::default());
        let journal = Journal::open(
            store.clone(),
            seq,
            1 << 20,
            Default::default(),
            cancel.clone(),
        )
        .await
        .unwrap();
        call(&journal, "sleep 1", "a").await.unwrap();
        // The host stops: what the task does on its way out (a write after
        // a cancelled call) is not what a resumed run must replay, and is
        // refused rather than made unrecorded (it would be made again
        // when the task resumes).
        cancel.cancel();
        assert!(matches!(
            call(&journal, "kv set status failed", "").await,
            Err(JournalError::Cancelled)
        ));
        assert!(matches!(
            journal.intent("http intent POST /x".into()).await,
            Err(JournalError::Cancelled)
        ));
        assert_eq!(sleep_until(&journal, 50).await.unwrap(), 50);
        let steps: Vec<String> = store
            .steps(seq)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.call)
            .collect();
        assert_eq!(steps, ["sleep 1"]);
    }

    #[tokio::test]
    async fn a_full_journal_refuses_the_step_and_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let seq = task(&store).await;
        let journal = Journal::open(
            store.clone(),
            seq,
            64,
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
        call(&journal, "kv get a", "short").await.unwrap();
        let error = call(&journal, "kv get b", &"x".repeat(100))
            .await
            .unwrap_err();
        assert!(
            matches!(error, JournalError::Limit { limit: 64, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("journal_bytes"), "{error}");
        // Nothing of the refused step was written.
        assert_eq!(store.steps(seq).await.unwrap().len(), 1);
    }
}
