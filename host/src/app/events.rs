//! `dispatch` and `wait-event`: Sanic's signals, across all workers.

use super::AppState;
use super::TaskScope;
use crate::bindings::GuestError;
use crate::events::{check_dispatch, check_name};
use crate::task::CancelSignal;
use std::sync::Arc;
use std::time::Duration;

impl AppState {
    pub(super) fn app_dispatch(&self, event: &str, payload: &str) -> Result<u32, GuestError> {
        check_dispatch(event, payload, &self.app.limits)
            .map_err(|limit| GuestError::Limit(limit.to_string()))?;
        Ok(match &self.scope {
            Some(scope) => {
                let events = scope.events();
                events
                    .check_travels(event, false)
                    .map_err(GuestError::InvalidArgs)?;
                events.dispatch(event, payload)
            }
            None => 0,
        })
    }
}

/// Waits for the next dispatch matching `pattern`; `None` on timeout,
/// `cancelled` as soon as the task is cancelled.
pub(super) async fn wait_event(
    scope: Arc<dyn TaskScope>,
    cancel: Arc<CancelSignal>,
    pattern: String,
    timeout_ms: Option<u64>,
) -> Result<Option<String>, GuestError> {
    if cancel.is_cancelled() {
        return Err(GuestError::Cancelled);
    }
    check_name(&pattern).map_err(|limit| GuestError::Limit(limit.to_string()))?;
    scope
        .events()
        .check_travels(&pattern, true)
        .map_err(GuestError::InvalidArgs)?;
    let mut wait = scope.events().subscribe(&pattern);
    let timeout = async {
        match timeout_ms {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        payload = wait.payload() => Ok(Some(payload.to_string())),
        _ = timeout => Ok(None),
        _ = cancel.cancelled() => Err(GuestError::Cancelled),
    }
}
