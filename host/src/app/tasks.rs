//! `add-task`, `get-task`, `cancel-task`, `tasks`, `purge-tasks`: Sanic's
//! task registry API, on the caller's own worker.

use super::AppState;
use super::TaskScope;
use crate::bindings::GuestError;
use crate::bindings::taskhost::plugin::{app, types};
use crate::config::Limit;
use crate::config::{Backoff, RestartPolicy, RestartSpec, RestartWhen, RetrySpec, TaskSpec};
use crate::operations::types::{NameScope, Submission};
use crate::registry::AddTaskError;
use crate::registry::{RegisterError, TaskHandle};
use crate::task::{CancelStage, TaskInfo, TaskState, TaskView};
use std::sync::Arc;

impl AppState {
    /// The caller's worker, or `failed` for the throw-away instances that
    /// list factories at load time (they have no worker).
    pub(super) fn worker_ctx(&self) -> Result<Arc<dyn TaskScope>, GuestError> {
        self.scope
            .clone()
            .ok_or_else(|| GuestError::Failed("no worker: tasks cannot be managed here".into()))
    }

    pub(super) fn app_task_id(&self) -> u64 {
        self.ident.id
    }

    pub(super) fn app_get_task(&self, name: &str) -> Result<types::TaskInfo, GuestError> {
        check_name(name)?;
        let worker = self.worker_ctx()?;
        worker
            .registry()
            .get_by_name(name)
            .map(|info| to_wit(&info))
            .ok_or_else(|| GuestError::NotFound(name.to_string()))
    }

    pub(super) fn app_tasks(&self) -> Vec<types::TaskInfo> {
        match &self.scope {
            Some(worker) => worker.registry().snapshot().iter().map(to_wit).collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn app_purge_tasks(&self) -> u32 {
        match &self.scope {
            Some(worker) => u32::try_from(worker.registry().purge()).unwrap_or(u32::MAX),
            None => 0,
        }
    }
}

impl AppState {
    /// The worker and plugin an `add-task` call targets, or the error to
    /// return at once (refused while the caller is being cancelled).
    pub(super) fn add_task_target(
        &self,
        plugin: Option<String>,
    ) -> Result<(Arc<dyn TaskScope>, String), GuestError> {
        if self.cancel.is_cancelled() {
            return Err(GuestError::Cancelled);
        }
        let worker = self.worker_ctx()?;
        Ok((
            worker,
            plugin.unwrap_or_else(|| self.ident.plugin.to_string()),
        ))
    }
}

/// `add-task`: starts a task on the caller's worker and returns its id once
/// the factory has accepted the arguments.
pub(super) async fn add_task(
    worker: Arc<dyn TaskScope>,
    plugin: String,
    spec: TaskSpec,
) -> Result<u64, GuestError> {
    worker
        .add_task(plugin, spec)
        .await
        .map_err(|error| match error {
            AddTaskError::UnknownPlugin(name) => GuestError::UnknownPlugin(name),
            AddTaskError::Register(RegisterError::DuplicateName(name)) => {
                GuestError::DuplicateName(name)
            }
            AddTaskError::Register(RegisterError::Limit(limit)) => {
                GuestError::Limit(limit.to_string())
            }
            AddTaskError::Refused(error) => error,
            AddTaskError::NoWorker(worker) => GuestError::Failed(format!("no worker {worker}")),
            AddTaskError::Invalid(message) => GuestError::InvalidArgs(message),
            AddTaskError::Storage(message)
            | AddTaskError::Unavailable(message)
            | AddTaskError::Elsewhere(message)
            | AddTaskError::Draining(message) => GuestError::Failed(message),
        })
}

/// `task-options.retry` as app.toml would write it.
fn retry_spec(retry: app::RetryPolicy) -> RetrySpec {
    RetrySpec {
        attempts: retry.attempts,
        backoff: Some(if retry.exponential {
            Backoff::Exponential
        } else {
            Backoff::Fixed
        }),
        initial: Some(format!("{}ms", retry.initial_ms)),
        max: Some(format!("{}ms", retry.max_ms)),
        jitter: Some(retry.jitter),
    }
}

/// `task-options.restart` as app.toml would write it.
fn restart_spec(restart: app::RestartPolicy) -> RestartSpec {
    let ms = |ms: Option<u64>| ms.map(|ms| format!("{ms}ms"));
    RestartSpec {
        when: match restart.when {
            app::RestartWhen::Always => RestartWhen::Always,
            app::RestartWhen::OnFailure => RestartWhen::OnFailure,
        },
        intensity: restart.intensity,
        period: ms(restart.period_ms),
        initial: ms(restart.initial_ms),
        max: ms(restart.max_ms),
    }
}

/// `task-options.restart` checked as every submission's is, with
/// `durable`: `invalid-args` naming the field.
fn restart_checked(
    restart: Option<app::RestartPolicy>,
    durable: bool,
) -> Result<Option<(RestartSpec, RestartPolicy)>, GuestError> {
    let Some(restart) = restart else {
        return Ok(None);
    };
    let spec = restart_spec(restart);
    let policy = spec
        .policy()
        .and_then(|policy| crate::config::check_restart(&policy, durable).map(|()| policy))
        .map_err(|e| {
            // Named as the WIT's record names them.
            let message = format!("{e:#}")
                .replace("`period`", "`period-ms`")
                .replace("`initial`", "`initial-ms`")
                .replace("`max`", "`max-ms`");
            GuestError::InvalidArgs(format!("task-options.restart: {message}"))
        })?;
    Ok(Some((spec, policy)))
}

/// `task-options.placement` as the strings every submission's queue
/// options are: a delay as `"{ms}ms"`, a time as RFC 3339. The queue's
/// name is bounded first: a refusal echoes it.
struct PlacementText {
    queue: String,
    key: Option<String>,
    priority: Option<i64>,
    delay: Option<String>,
    run_at: Option<String>,
}

fn placement_text(placement: app::Placement) -> Result<PlacementText, GuestError> {
    crate::config::Limit::check_name("a queue name", &placement.queue)
        .map_err(|e| GuestError::InvalidArgs(format!("task-options.placement.queue: {e}")))?;
    let (delay, run_at) = match placement.start {
        None => (None, None),
        Some(app::StartAt::DelayMs(ms)) => (Some(format!("{ms}ms")), None),
        Some(app::StartAt::RunAtMs(ms)) => {
            let at = i64::try_from(ms)
                .ok()
                .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
                .ok_or_else(|| {
                    GuestError::InvalidArgs(format!(
                        "task-options.placement.start: run-at-ms {ms} is not a time"
                    ))
                })?;
            (None, Some(at.to_rfc3339()))
        }
    };
    Ok(PlacementText {
        queue: placement.queue,
        key: placement.key,
        priority: placement.priority.map(i64::from),
        delay,
        run_at,
    })
}

/// A guest's placement, checked as every submission's is:
/// `invalid-args` naming the field.
fn placement_checked(text: &PlacementText) -> Result<crate::config::Placement, GuestError> {
    let checked = crate::config::QueueOptions {
        queue: Some(&text.queue),
        key: text.key.as_deref(),
        priority: text.priority,
        delay: text.delay.as_deref(),
        run_at: text.run_at.as_deref(),
    }
    .placement()
    .map_err(|e| GuestError::InvalidArgs(format!("task-options.placement: {e}")))?;
    Ok(checked.expect("a queue is named, so there is a placement"))
}

fn placement_of(
    placement: Option<app::Placement>,
) -> Result<Option<crate::config::Placement>, GuestError> {
    placement
        .map(|placement| placement_checked(&placement_text(placement)?))
        .transpose()
}

/// `start-task`'s options as a spec; bad ones are `invalid-args` naming
/// the field.
pub(super) fn spec_of(
    factory: String,
    args: String,
    options: app::TaskOptions,
) -> Result<TaskSpec, GuestError> {
    let retry = options
        .retry
        .map(|retry| {
            retry_spec(retry)
                .policy()
                .map_err(|e| GuestError::InvalidArgs(format!("task-options.retry: {e:#}")))
        })
        .transpose()?;
    if options.child && options.durable {
        return Err(GuestError::InvalidArgs(
            "task-options.child: a durable task outlives a crash, and its parent's instance \
             does not: it cannot be a child (drop one of the two)"
                .into(),
        ));
    }
    let restart = restart_checked(options.restart, options.durable)?.map(|(_, policy)| policy);
    Ok(TaskSpec {
        factory,
        args,
        name: options.name,
        retry,
        restart,
        on_load: None,
        durable: options.durable,
        resume: false,
        idempotency_key: options.idempotency_key,
        connection: None,
        queue: placement_of(options.placement)?,
        parent: None,
        trace: None,
    })
}

/// `start-task-on`'s call as the one submission every caller makes: on
/// `host` (`any`, `all` or a name), its name unique cluster-wide with
/// `cluster_name`.
pub(super) fn submission_of(
    host: String,
    plugin: String,
    factory: String,
    args: String,
    options: app::TaskOptions,
    cluster_name: bool,
) -> Result<Submission, GuestError> {
    if options.child {
        return Err(GuestError::InvalidArgs(
            "task-options.child: a task of another host cannot be a child (its parent's cancel \
             does not travel): start it with start-task, or without `child`"
                .into(),
        ));
    }
    let args = serde_json::from_str(&args)
        .map_err(|e| GuestError::InvalidArgs(format!("args are not JSON: {e}")))?;
    let retry = options.retry.map(retry_spec);
    if let Some(retry) = &retry {
        retry
            .policy()
            .map_err(|e| GuestError::InvalidArgs(format!("task-options.retry: {e:#}")))?;
    }
    // Checked here, as the host that runs it will: a bad one is refused
    // before it travels.
    let placement = options.placement.map(placement_text).transpose()?;
    if let Some(text) = &placement {
        placement_checked(text)?;
    }
    let restart = restart_checked(options.restart, options.durable)?.map(|(spec, _)| spec);
    Ok(Submission {
        plugin,
        factory,
        args,
        name: options.name,
        worker: None,
        all_workers: false,
        retry,
        restart,
        on_load: None,
        durable: options.durable.into(),
        idempotency_key: options.idempotency_key,
        host: Some(host),
        scope: if cluster_name {
            NameScope::Cluster
        } else {
            NameScope::Worker
        },
        queue: placement.as_ref().map(|p| p.queue.clone()),
        key: placement.as_ref().and_then(|p| p.key.clone()),
        priority: placement.as_ref().and_then(|p| p.priority),
        delay: placement.as_ref().and_then(|p| p.delay.clone()),
        run_at: placement.and_then(|p| p.run_at),
        traceparent: None,
    })
}

/// What `cancel-task` works with: everything it needs, owned, so its future
/// does not borrow the store's data across the wait.
pub(super) struct CancelRequest {
    worker: Arc<dyn TaskScope>,
    target: TaskHandle,
    caller: Arc<crate::task::CancelSignal>,
    /// A durable target's record: the cancel is recorded before it is
    /// sent.
    durable: Option<u64>,
    /// The caller cancels itself.
    is_self: bool,
    /// The target's record when the cancel was asked: what is reported if
    /// it is purged before its end can be read.
    seen: Option<crate::task::TaskInfo>,
}

impl AppState {
    /// Finds the target of `cancel-task`, or the error to return at once.
    pub(super) fn cancel_request(&self, name: &str) -> Result<CancelRequest, GuestError> {
        check_name(name)?;
        let worker = self.worker_ctx()?;
        let target = worker
            .registry()
            .handle_by_name(name)
            .ok_or_else(|| GuestError::NotFound(name.to_string()))?;
        let seen = worker.registry().get(target.id);
        let durable = seen.as_ref().and_then(|info| info.ident.durable);
        let is_self = target.id == self.ident.id;
        Ok(CancelRequest {
            worker,
            target,
            caller: self.cancel.clone(),
            is_self,
            durable,
            seen,
        })
    }
}

/// `cancel-task`: cancels the target (forced after the grace period) and
/// returns its final info once it has ended. A caller being cancelled
/// still waits, as Sanic's `await app.cancel_task(...)` in a `finally:`
/// does: the seed's cleanup cancels its receiver and then purges it, which
/// needs the receiver to have ended. The wait is bounded: by the target's
/// grace period, and by what is left of the caller's own (the caller being
/// forced cuts it short), so a helper that ignores its cancel costs the
/// caller the rest of its cleanup.
pub(super) async fn cancel_task(request: CancelRequest) -> Result<types::TaskInfo, GuestError> {
    let CancelRequest {
        worker,
        mut target,
        caller,
        durable,
        is_self,
        seen,
    } = request;
    if let Some(seq) = durable
        && !target.is_ended()
    {
        worker
            .storage()
            .tasks()
            .cancel_requested(seq)
            .await
            .map_err(|e| GuestError::Failed(format!("cannot record the cancel: {e:#}")))?;
    }
    target.cancel();
    // Waiting for oneself to end would never return: cancelling oneself
    // means "I am being cancelled" from here on, with the same grace period
    // as any other cancel.
    if is_self || caller.is_forced() {
        return Err(GuestError::Cancelled);
    }
    tokio::select! {
        _ = target.ended() => {}
        _ = caller.forced() => return Err(GuestError::Cancelled),
    }
    if let Some(info) = worker.registry().get(target.id) {
        return Ok(to_wit(&info));
    }
    // Purged by someone else between its end and now (another
    // connection's cleanup, say): report the end the handle saw, on the
    // record seen before the cancel; its result went with the purge.
    let (Some(mut info), Some(state)) = (seen, target.end_state()) else {
        return Err(GuestError::Failed(format!(
            "task {} ended and was purged before its end could be read",
            target.id
        )));
    };
    info.state = state;
    info.ended_at.get_or_insert_with(std::time::SystemTime::now);
    info.outcome = None;
    Ok(to_wit(&info))
}

impl AppState {
    /// What a resuming task's start of another task does first (docs/
    /// durable.md, "Tasks it starts"): the start's intent is journaled,
    /// and the task started is durable and resumes too, under an
    /// idempotency key made of this task's key and the intent's mark
    /// (unless the guest gave one). So the start made again on replay
    /// finds the task the first run started, running or ended, and
    /// answers with it instead of starting another; a join of it then
    /// waits for its end, or reads it from its record. Nothing for a task
    /// that does not resume.
    pub(super) async fn journal_start(
        &self,
        plugin: &str,
        spec: &mut TaskSpec,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        let Some(journal) = &self.journal else {
            return Ok(Ok(()));
        };
        if spec.restart.is_some() {
            return Ok(Err(GuestError::InvalidArgs(
                "task-options.restart: a task a resuming task starts is durable (so that its \
                 start is made once), and a durable task is not restarted: drop `restart`, or \
                 give it a retry policy"
                    .into(),
            )));
        }
        let what = serde_json::json!([spec.name, spec.idempotency_key, spec.args]).to_string();
        let call = format!(
            "start task {plugin}/{} {}",
            spec.factory,
            crate::journal::digest(what.as_bytes())
        );
        // A start made again finds the task the first run started, by
        // its key: never uncertain.
        let mark = match journal.intent(call).await {
            Ok(intent) => intent.mark,
            Err(crate::journal::JournalError::Cancelled) => {
                return Ok(Err(GuestError::Cancelled));
            }
            Err(error) => return Err(error.into()),
        };
        spec.durable = true;
        spec.resume = true;
        if spec.idempotency_key.is_none() {
            let parent = self.idempotency_key.as_deref().unwrap_or_default();
            spec.idempotency_key = Some(format!("started-by/{parent}/{mark}"));
        }
        Ok(Ok(()))
    }

    /// Makes task `id` of `worker` (just started by this caller) its
    /// child: cancelled when the caller's task is cancelled or its attempt
    /// ends.
    pub(super) fn adopt_child(&self, worker: &Arc<dyn TaskScope>, id: u64) {
        if let Some(child) = worker.registry().handle_of(id) {
            self.cancel
                .task()
                .adopt(child.signal().clone(), child.grace());
        }
    }
}

/// No task can have a name over the limit, and echoing one back in a
/// not-found error would hand the guest its giant string again.
pub(super) fn check_name(name: &str) -> Result<(), GuestError> {
    Limit::check_name("a task name", name).map_err(|limit| GuestError::Limit(limit.to_string()))
}

/// The guest's `task-info`: the same record as [`TaskView`], in WIT types.
pub(super) fn to_wit(info: &TaskInfo) -> types::TaskInfo {
    view_to_wit(TaskView::from(info))
}

/// [`to_wit`] of a task as the API shows it (another host's, say).
pub(super) fn view_to_wit(view: TaskView) -> types::TaskInfo {
    types::TaskInfo {
        id: view.id,
        name: view.name,
        plugin: view.plugin,
        plugin_version: view.plugin_version,
        factory: view.factory,
        worker: view.worker.index(),
        state: match view.state {
            // Older guests see it as pending (`bindings::v0_2_types`).
            TaskState::Queued => types::TaskState::Queued,
            TaskState::Pending => types::TaskState::Pending,
            TaskState::Running => types::TaskState::Running,
            TaskState::Done => types::TaskState::Done,
            TaskState::Failed => types::TaskState::Failed,
            TaskState::Cancelled => types::TaskState::Cancelled,
        },
        created_at_ms: view.created_at_ms,
        started_at_ms: view.started_at_ms,
        ended_at_ms: view.ended_at_ms,
        result: view.result,
        error: view.error,
        cancel_stage: view.cancel_stage.map(|stage| match stage {
            CancelStage::Cooperative => types::CancelStage::Cooperative,
            CancelStage::Forced => types::CancelStage::Forced,
        }),
    }
}
