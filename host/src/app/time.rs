//! `app.sleep(ms)`.

use crate::bindings::GuestError;
use crate::task::CancelSignal;
use std::sync::Arc;
use std::time::Duration;

/// Sleeps on the worker's timer, or returns `cancelled` the moment the task
/// is cancelled (and at once if it already was).
///
/// Takes the signal by value: the future must not borrow the store's data
/// across the await (the data is not `Sync`).
pub(super) async fn sleep(cancel: Arc<CancelSignal>, ms: u64) -> Result<(), GuestError> {
    if cancel.is_cancelled() {
        return Err(GuestError::Cancelled);
    }
    // No time to wait: a yield to the worker's other tasks, not a timer
    // (whose tick is a millisecond).
    if ms == 0 {
        tokio::task::yield_now().await;
        return match cancel.is_cancelled() {
            true => Err(GuestError::Cancelled),
            false => Ok(()),
        };
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        _ = cancel.cancelled() => Err(GuestError::Cancelled),
    }
}
