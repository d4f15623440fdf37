//! `add-task`, `get-task`, `cancel-task`, `tasks`, `purge-tasks`: Sanic's
//! task registry API, on the caller's own worker.

use super::AppState;
use super::TaskScope;
use crate::bindings::GuestError;
use crate::bindings::taskhost::plugin::{app, types};
use crate::config::Limit;
use crate::config::{Backoff, RetrySpec, TaskSpec};
use crate::operations::types::{NameScope, Submission};
use crate::registry::AddTaskError;
use crate::registry::{RegisterError, TaskHandle};
use crate::task::{CancelStage, TaskInfo, TaskState, TaskView};
use std::sync::Arc;

impl AppState {
    /// The caller's worker, or `failed` for the throw-away instances that
    /// list factories at load time (they have no worker).
    fn worker_ctx(&self) -> Result<Arc<dyn TaskScope>, GuestError> {
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
    Ok(TaskSpec {
        factory,
        args,
        name: options.name,
        retry,
        durable: options.durable,
        idempotency_key: options.idempotency_key,
        connection: None,
        queue: None,
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
    let args = serde_json::from_str(&args)
        .map_err(|e| GuestError::InvalidArgs(format!("args are not JSON: {e}")))?;
    let retry = options.retry.map(retry_spec);
    if let Some(retry) = &retry {
        retry
            .policy()
            .map_err(|e| GuestError::InvalidArgs(format!("task-options.retry: {e:#}")))?;
    }
    Ok(Submission {
        plugin,
        factory,
        args,
        name: options.name,
        worker: None,
        all_workers: false,
        retry,
        durable: options.durable,
        idempotency_key: options.idempotency_key,
        host: Some(host),
        scope: if cluster_name {
            NameScope::Cluster
        } else {
            NameScope::Worker
        },
        queue: None,
        key: None,
        priority: None,
        delay: None,
        run_at: None,
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

/// No task can have a name over the limit, and echoing one back in a
/// not-found error would hand the guest its giant string again.
fn check_name(name: &str) -> Result<(), GuestError> {
    Limit::check_name("a task name", name).map_err(|limit| GuestError::Limit(limit.to_string()))
}

/// The guest's `task-info`: the same record as [`TaskView`], in WIT types.
pub(super) fn to_wit(info: &TaskInfo) -> types::TaskInfo {
    let view = TaskView::from(info);
    types::TaskInfo {
        id: view.id,
        name: view.name,
        plugin: view.plugin,
        plugin_version: view.plugin_version,
        factory: view.factory,
        worker: view.worker.index(),
        state: match view.state {
            // The WIT's `task-state` has no `queued` yet (a new case is a
            // new type for guests built against 0.2.0): a queued task is
            // `pending` to a guest, registered and not yet running.
            TaskState::Queued | TaskState::Pending => types::TaskState::Pending,
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
