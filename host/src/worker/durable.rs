//! Durable tasks on workers: recorded before they start, found again by
//! their idempotency key, run again after a restart, and listed with their
//! kept outcome once they ended (see `crate::storage::tasks`).

use super::{DurableRun, Launch, WorkerCtx, await_verdict};
use crate::config::{RetrySpec, TaskSpec};
use crate::plugin::Plugin;
use crate::registry::{AddTaskError, Added, RegisterError, TaskHandle, next_task_id};
use crate::storage::{NewTask, Submitted, TaskRecord, TaskStore};
use crate::task::{CancelStage, Outcome, TaskIdent, TaskInfo, WorkerId};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

fn storage_error(error: anyhow::Error) -> AddTaskError {
    if error
        .downcast_ref::<crate::storage::Unavailable>()
        .is_some()
    {
        return AddTaskError::Unavailable(format!("{error:#}"));
    }
    AddTaskError::Storage(format!("{error:#}"))
}

impl WorkerCtx {
    /// The journal of resuming task `seq` for its next attempt: as
    /// recorded, or emptied first when `afresh` (a retry).
    pub(super) async fn journal(
        &self,
        seq: u64,
        afresh: bool,
        cancel: Arc<crate::task::CancelSignal>,
    ) -> Result<Arc<crate::journal::Journal>, String> {
        let store = self.records();
        if afresh {
            store.clear_steps(seq).await.map_err(|error| {
                format!("cannot empty the task's journal for its retry: {error:#}")
            })?;
        }
        crate::journal::Journal::open(
            store,
            seq,
            self.env.app.limits.journal_bytes,
            self.env.metrics.journal.clone(),
            cancel,
        )
        .await
        .map_err(|error| format!("cannot read the task's journal: {error:#}"))
    }

    /// Where durable tasks are recorded.
    fn records(&self) -> Arc<dyn TaskStore> {
        self.env.storage.tasks().clone()
    }

    /// Records a durable task, then starts it (waiting for the factory's
    /// verdict with `check`); or, when its idempotency key names a task
    /// recorded before, answers with that task and starts nothing new
    /// (unless that task had not ended and is not running in this
    /// process: then it runs again).
    pub(super) async fn submit(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        spec: TaskSpec,
        check: bool,
    ) -> Result<(Added, TaskHandle), AddTaskError> {
        let storage = self.records();
        if spec.resume && !storage.keeps_journals() {
            return Err(AddTaskError::Invalid(
                crate::storage::NoJournals.to_string(),
            ));
        }
        // Bounds first: a task over them is refused without a record.
        self.check(&spec.name, &spec.factory, &spec.args)?;
        // So is one its queue refuses (no such queue, no key); its key and
        // time are recorded as resolved now.
        let queued = match &spec.queue {
            Some(placement) => Some(self.queued_at(placement, &spec.args)?),
            None => None,
        };
        // A queued task whose turn comes as it enters has its first
        // attempt counted in its record: one write fewer than at its turn.
        let started = match &spec.queue {
            None => true,
            Some(placement) => self.starts_at_once(placement),
        };
        let env = self.env.clone();
        let _one_at_a_time = match spec.idempotency_key {
            Some(_) => Some(env.durable_submit.lock().await),
            None => None,
        };
        let new = NewTask {
            name: spec.name.clone(),
            worker: self.id,
            plugin: plugin.name.to_string(),
            plugin_version: plugin.version.to_string(),
            factory: spec.factory.clone(),
            args: spec.args.clone(),
            retry: spec.retry.as_ref().map(|policy| policy.spec()),
            idempotency_key: spec.idempotency_key.clone(),
            queued,
            started,
            traceparent: spec.trace.map(|trace| trace.header()),
            resume: spec.resume,
        };
        let record = match storage.submit(new).await.map_err(storage_error)? {
            Submitted::New(record) => record,
            Submitted::Existing(record) => return Box::pin(self.adopt(record)).await,
        };
        let name = record.name.clone();
        let run = DurableRun {
            seq: record.seq,
            first_attempt: 1,
            key: record.effective_key().into(),
            counted: record.queued.is_some() && record.attempt > 0,
            resume: record.resume,
        };
        if let Some(queued) = &record.queued {
            let spec = TaskSpec {
                name: Some(name),
                queue: Some(queued.placement()),
                ..spec
            };
            // Answered at once, as any queued task; a dedupe queue's answer
            // (a task of its key waits) leaves no record behind.
            return match self.enqueue(plugin, spec, Some((run, None))) {
                Ok((added, handle)) if added.created => Ok((added, handle)),
                Ok(existing) => {
                    self.forget(&*storage, record.seq).await;
                    Ok(existing)
                }
                Err(error) => {
                    self.forget(&*storage, record.seq).await;
                    Err(error)
                }
            };
        }
        let spec = TaskSpec {
            name: Some(name.clone()),
            ..spec
        };
        let (verdict, checked) = if check {
            let (verdict, checked) = oneshot::channel();
            (Some(verdict), Some(checked))
        } else {
            (None, None)
        };
        let handle = match self.start(Launch::new(plugin, spec, Some(run)), verdict) {
            Ok(handle) => handle,
            Err(error) => {
                self.forget(&*storage, record.seq).await;
                return Err(error.into());
            }
        };
        if let Some(checked) = checked
            && let Err(error) = await_verdict(checked).await
        {
            self.forget(&*storage, record.seq).await;
            return Err(error);
        }
        Ok((
            Added {
                worker: self.id,
                id: handle.id,
                name: Some(name),
                created: true,
            },
            handle,
        ))
    }

    /// Whether a task placed as `placement` would start as soon as it
    /// enters its queue ([`crate::queues::Queue::starts_at_once`]) and find
    /// room on this worker. A race may make it wait after all (for room,
    /// or a pause): its record then counts one attempt that has not begun,
    /// so after a crash or a stop during that wait it has one retry fewer,
    /// never one more.
    fn starts_at_once(&self, placement: &crate::config::Placement) -> bool {
        self.env
            .queues
            .get(&placement.queue)
            .is_ok_and(|queue| queue.starts_at_once(placement))
            && self.registry.has_room(self.env.app.limits.tasks_per_worker)
    }

    /// Where a durable task submitted with `placement` waits, resolved now:
    /// its queue checked, its key read, its delay made a time.
    fn queued_at(
        &self,
        placement: &crate::config::Placement,
        args: &str,
    ) -> Result<crate::storage::Queued, AddTaskError> {
        if self.id == WorkerId::Main {
            return Err(AddTaskError::Invalid(
                "the main scope runs before the workers and has no queues: pick a worker".into(),
            ));
        }
        let queue = self
            .env
            .queues
            .get(&placement.queue)
            .map_err(AddTaskError::Invalid)?;
        let key = crate::config::key_of(&queue.config(), placement.key.as_deref(), args)
            .map_err(AddTaskError::Invalid)?;
        Ok(crate::storage::Queued {
            queue: placement.queue.clone(),
            key,
            priority: placement.priority,
            run_at_ms: placement.start.map(|start| {
                start
                    .resolve()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as u64
            }),
        })
    }

    /// Drops the record of a task that never ran.
    async fn forget(&self, storage: &dyn TaskStore, seq: u64) {
        if let Err(error) = storage.forget(seq).await {
            tracing::error!(
                "cannot drop the record of durable task {seq}, which never ran ({error:#}); \
                 the next start will run it"
            );
        }
    }

    /// The answer to a submission whose key names `record`: the task as
    /// this process lists it, listing it first if need be.
    async fn adopt(
        self: &Arc<Self>,
        record: TaskRecord,
    ) -> Result<(Added, TaskHandle), AddTaskError> {
        let (worker, handle) = match self.env.durable_task(record.seq) {
            Some(found) => found,
            None => {
                let worker = self
                    .env
                    .worker(record.worker)
                    .unwrap_or_else(|| self.clone());
                let handle = worker.list_record(record.clone()).await?;
                (worker, handle)
            }
        };
        Ok((
            Added {
                worker: worker.id,
                id: handle.id,
                name: Some(record.name),
                created: false,
            },
            handle,
        ))
    }

    /// Lists a durable task this process does not list yet: an ended (or
    /// cancelled) one with its kept outcome, an unfinished one by running
    /// it again.
    async fn list_record(self: &Arc<Self>, record: TaskRecord) -> Result<TaskHandle, AddTaskError> {
        if record.outcome.is_some() || record.cancel_requested {
            return self.restore(record).await;
        }
        self.resume(record).await
    }

    /// Runs an unfinished durable task again, as its next attempt.
    async fn resume(self: &Arc<Self>, record: TaskRecord) -> Result<TaskHandle, AddTaskError> {
        let storage = self.records();
        let plugin = self.env.build_of(&record).await?;
        let retry = match record.retry.as_ref().map(RetrySpec::policy).transpose() {
            Ok(retry) => retry,
            Err(error) => {
                tracing::warn!(
                    "durable task {}: its stored retry policy does not read back ({error:#}); \
                     it runs without retries",
                    record.name
                );
                None
            }
        };
        let attempt = record.attempt.saturating_add(1);
        let run = DurableRun {
            seq: record.seq,
            first_attempt: attempt,
            key: record.effective_key().into(),
            counted: false,
            resume: record.resume,
        };
        // A queued task goes back in its queue, in submission order (the
        // records are read oldest first), keeping its time and its wait
        // since its submission (its priority has aged meanwhile); its
        // attempt is counted at its turn.
        if let Some(queued) = &record.queued {
            let submitted = UNIX_EPOCH + Duration::from_millis(record.created_ms);
            let spec = TaskSpec {
                factory: record.factory,
                args: record.args,
                name: Some(record.name),
                retry,
                restart: None,
                on_load: None,
                durable: true,
                resume: record.resume,
                idempotency_key: record.idempotency_key,
                connection: None,
                queue: Some(queued.placement()),
                parent: None,
                trace: record_trace(record.traceparent.as_deref()),
            };
            return self
                .enqueue(plugin, spec, Some((run, Some(submitted))))
                .map(|(_, handle)| handle);
        }
        storage
            .attempt_started(record.seq, attempt)
            .await
            .map_err(storage_error)?;
        let spec = TaskSpec {
            factory: record.factory,
            args: record.args,
            name: Some(record.name),
            retry,
            restart: None,
            on_load: None,
            durable: true,
            resume: record.resume,
            idempotency_key: record.idempotency_key,
            connection: None,
            queue: None,
            parent: None,
            trace: record_trace(record.traceparent.as_deref()),
        };
        Ok(self.start(Launch::new(plugin, spec, Some(run)), None)?)
    }

    /// Lists an ended durable task with its kept outcome. A task whose
    /// cancel was recorded but not its end (the host died between the two)
    /// ends `cancelled` now.
    async fn restore(self: &Arc<Self>, record: TaskRecord) -> Result<TaskHandle, AddTaskError> {
        let outcome = match record.outcome.clone() {
            Some(outcome) => outcome,
            None => {
                let outcome = Outcome::Cancelled {
                    stage: CancelStage::Cooperative,
                };
                self.records()
                    .ended(record.seq, &outcome, true)
                    .await
                    .map_err(storage_error)?;
                outcome
            }
        };
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let ident = Arc::new(TaskIdent {
            id: next_task_id(),
            name: Some(record.name),
            worker: self.id,
            plugin: record.plugin.into(),
            plugin_version: record.plugin_version.into(),
            factory: record.factory,
            durable: Some(record.seq),
            connection: None,
            queue: None,
            parent: None,
            trace: None,
            args: crate::task::ShownArgs::of(&record.args),
        });
        let info = TaskInfo {
            state: outcome.state(),
            created_at: at(record.created_ms),
            started_at: None,
            ended_at: Some(record.ended_ms.map_or_else(SystemTime::now, at)),
            outcome: Some(outcome),
            attempt: record.attempt,
            restarts: 0,
            ident: ident.clone(),
        };
        let handle = self.registry.restore(info)?;
        Ok(handle)
    }
}

/// At start: runs again every unfinished durable task of `workers` (the
/// main scope alone, or every worker), then lists the ones that ended
/// before with their outcome, as far as the registries keep ended tasks.
/// A record of a worker index the app no longer has goes to index modulo
/// the workers. Returns the handles of the tasks started (the main scope
/// waits for its own).
pub(crate) async fn recover(workers: &[Arc<WorkerCtx>]) -> Result<Vec<TaskHandle>> {
    let Some(first) = workers.first() else {
        return Ok(Vec::new());
    };
    let storage = first.records();
    let main = first.id == WorkerId::Main;
    let place = |worker: WorkerId| -> Option<&Arc<WorkerCtx>> {
        match (worker, main) {
            (WorkerId::Main, true) => workers.first(),
            (WorkerId::Index(i), false) => workers.get(i as usize % workers.len()),
            _ => None,
        }
    };
    let mut started = Vec::new();
    let env = &first.env;
    for record in storage.unfinished().await? {
        let Some(worker) = place(record.worker) else {
            continue;
        };
        // Held as a keyed submission holds it: a task resumed above may
        // be replaying the start of this one (its key), and must find it
        // listed, or list it itself, not both.
        let _one_at_a_time = env.durable_submit.lock().await;
        // Already listed: a task found it by its key and ran it.
        if env.durable_task(record.seq).is_some() {
            continue;
        }
        let name = record.name.clone();
        let attempt = record.attempt.saturating_add(1);
        match worker.list_record(record).await {
            Ok(handle) if !handle.is_ended() => {
                tracing::info!(
                    "durable task {name} had not ended: running it again on worker {} \
                     (attempt {attempt})",
                    worker.id
                );
                started.push(handle);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                "durable task {name} had not ended but cannot run again now: {error}; it stays \
                 recorded for the next start"
            ),
        }
    }
    let keep = env.app.limits.ended_tasks_per_worker * workers.len();
    // Of two records with one name on one worker, the newer is listed;
    // they are listed oldest first, as the registry drops the oldest.
    let ended = storage.recently_ended(keep).await?;
    let mut seen = std::collections::HashSet::new();
    let newest: std::collections::HashSet<u64> = ended
        .iter()
        .rev()
        .filter(|r| seen.insert((place(r.worker).map(|w| w.id), r.name.clone())))
        .map(|r| r.seq)
        .collect();
    for record in ended.into_iter().filter(|r| newest.contains(&r.seq)) {
        let Some(worker) = place(record.worker) else {
            continue;
        };
        let _one_at_a_time = env.durable_submit.lock().await;
        if env.durable_task(record.seq).is_some() {
            continue;
        }
        match worker.restore(record).await {
            Ok(_) | Err(AddTaskError::Register(RegisterError::DuplicateName(_))) => {}
            Err(error) => return Err(anyhow::anyhow!("{error}")),
        }
    }
    Ok(started)
}

/// Runs a durable task handed to this host by its cluster (its host died,
/// or this host restarted): as its next attempt, on the worker of its
/// record's index (modulo the workers; a `main` task goes to the first).
pub(crate) async fn run_handed_over(
    env: &Arc<super::TaskEnv>,
    record: TaskRecord,
) -> Result<TaskHandle, AddTaskError> {
    let workers: Vec<Arc<WorkerCtx>> = env
        .workers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .filter(|w| w.id != WorkerId::Main)
        .collect();
    if workers.is_empty() {
        return Err(AddTaskError::Unavailable(
            "this host's workers have not started".into(),
        ));
    }
    let worker = &workers[record.worker.index().unwrap_or(0) as usize % workers.len()];
    // An earlier run of it that ended here (a copy stopped when another
    // host took it over) holds its name: the new run takes it.
    if let Some(info) = worker.registry.get_by_name(&record.name)
        && info.state.is_ended()
    {
        worker.registry.forget(info.ident.id);
    }
    worker.resume(record).await
}

/// The trace a durable task's record says its runs join: a run after a
/// restart (or on another host) continues the trace its submission began.
fn record_trace(traceparent: Option<&str>) -> Option<crate::trace_context::TraceParent> {
    traceparent.and_then(crate::trace_context::TraceParent::parse)
}
