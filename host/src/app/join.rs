//! `join`, `join-all`, `join-any`: a task waits for tasks to end and takes
//! their results (fan-out / fan-in), woken by their ends
//! ([`crate::joins`]); a task placed on another host of the cluster is
//! waited for there.

use super::tasks::{check_name, to_wit, view_to_wit};
use super::{AppState, TaskScope};
use crate::bindings::GuestError;
use crate::bindings::taskhost::plugin::{app, types};
use crate::joins::{Awaited, MAX_JOINED};
use crate::operations::types::ErrorKind;
use crate::task::CancelSignal;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// One task's end, as the guest will see it.
type Waiting = BoxFuture<'static, Result<types::TaskInfo, GuestError>>;

/// What a join works with, owned: its future does not borrow the store's
/// data across the wait.
pub(super) struct JoinRequest {
    waits: Vec<Waiting>,
    caller: Arc<CancelSignal>,
    timeout: Option<Duration>,
}

impl AppState {
    /// The tasks `tasks` names, found now; or the error naming the first
    /// at fault.
    pub(super) fn join_request(
        &self,
        tasks: Vec<app::TaskRef>,
        timeout_ms: Option<u64>,
    ) -> Result<JoinRequest, GuestError> {
        if self.cancel.is_cancelled() {
            return Err(GuestError::Cancelled);
        }
        if tasks.len() > MAX_JOINED {
            return Err(GuestError::Limit(format!(
                "a join of {} tasks: one call waits for at most {MAX_JOINED}",
                tasks.len()
            )));
        }
        let worker = self.worker_ctx()?;
        let waits = tasks
            .into_iter()
            .map(|task| self.waiting(&worker, task))
            .collect::<Result<_, _>>()?;
        Ok(JoinRequest {
            waits,
            caller: self.cancel.clone(),
            timeout: timeout_ms.map(Duration::from_millis),
        })
    }

    /// The wait for one task's end.
    fn waiting(
        &self,
        worker: &Arc<dyn TaskScope>,
        task: app::TaskRef,
    ) -> Result<Waiting, GuestError> {
        let awaited = match task {
            app::TaskRef::Id(id) => worker
                .awaited(id)
                .ok_or_else(|| GuestError::NotFound(format!("task {id}")))?,
            app::TaskRef::Name(name) => {
                check_name(&name)?;
                Awaited::by_name(worker.clone(), &name).ok_or(GuestError::NotFound(name))?
            }
            app::TaskRef::Placed(app::PlacedTask { host, id }) => {
                // Another host's, or any host's without a cluster (then
                // the wait says there is none).
                if worker.host_name().is_none_or(|here| here != host) {
                    let joined = worker.clone().join_on(host.clone(), id);
                    return Ok(async move {
                        joined
                            .await
                            .map(view_to_wit)
                            .map_err(|error| match error.kind {
                                ErrorKind::NotFound => {
                                    GuestError::NotFound(format!("task {id} on host {host}"))
                                }
                                _ => GuestError::Failed(format!(
                                    "cannot join task {id} on host {host}: {error}"
                                )),
                            })
                    }
                    .boxed());
                }
                worker
                    .awaited(id)
                    .ok_or_else(|| GuestError::NotFound(format!("task {id}")))?
            }
        };
        let id = awaited.seen().ident.id;
        if id == self.ident.id {
            return Err(GuestError::InvalidArgs(format!(
                "join: task {id} is the caller itself, which cannot wait for its own end"
            )));
        }
        if self.ident.parent == Some(id) {
            return Err(GuestError::InvalidArgs(format!(
                "join: task {id} started the caller (its parent); a parent joins its \
                 children, not the other way (the two could wait for each other)"
            )));
        }
        let mut awaited = awaited;
        Ok(async move { Ok(to_wit(&awaited.ended().await)) }.boxed())
    }
}

/// Runs `wait` unless the caller is cancelled first (`cancelled`) or the
/// request's timeout passes (none).
async fn bounded<T>(
    caller: &CancelSignal,
    timeout: Option<Duration>,
    wait: impl Future<Output = Result<T, GuestError>>,
) -> Result<Option<T>, GuestError> {
    let timed = async {
        match timeout {
            Some(timeout) => tokio::time::timeout(timeout, wait).await.ok(),
            None => Some(wait.await),
        }
    };
    tokio::select! {
        ended = timed => ended.transpose(),
        () = caller.cancelled() => Err(GuestError::Cancelled),
    }
}

/// `join-all`: every task's final info, in order, once all have ended.
pub(super) async fn join_all(
    request: JoinRequest,
) -> Result<Option<Vec<types::TaskInfo>>, GuestError> {
    let JoinRequest {
        waits,
        caller,
        timeout,
    } = request;
    bounded(&caller, timeout, async {
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
    })
    .await
}

/// `join-any`: the first task to end, its index and final info (of tasks
/// that had ended already, the first listed: each of their waits is ready
/// at its first poll, and `select_all` polls in order).
pub(super) async fn join_any(
    request: JoinRequest,
) -> Result<Option<(u32, types::TaskInfo)>, GuestError> {
    let JoinRequest {
        waits,
        caller,
        timeout,
    } = request;
    if waits.is_empty() {
        return Err(GuestError::InvalidArgs(
            "join-any: no task given, so none can end first".into(),
        ));
    }
    bounded(&caller, timeout, async {
        let (ended, index, _) = futures_util::future::select_all(waits).await;
        ended.map(|info| (u32::try_from(index).unwrap_or(u32::MAX), info))
    })
    .await
}
