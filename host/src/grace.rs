//! The clock of a cancelled task's grace period.
//!
//! A cancel gives a task `cancel_grace_ms` to clean up before it is
//! forced. That time is the task's own, counted from its first turn after
//! the cancel: the time it runs, or waits on something (a host call, a
//! timer). Not the time it waits for its worker's thread while the
//! worker's other tasks run.
//!
//! Why: when thousands of tasks are cancelled at once (shutdown, a drain,
//! a mass cancel), they clean up in turns on their worker's thread. A
//! guest that comes back from a long host call is past its epoch deadline
//! and yields at its first check, so a cleanup takes at least two turns,
//! and between them it waits behind every task still queued. Counted in
//! wall time, that wait used up the grace period of the unlucky ones:
//! 3 of 10,000 sleepers were forced without their cleanup at a shutdown
//! on a clean CI run with both cores busy.
//!
//! How: once cancelled, the task's future is polled with a waker of its
//! own ([`GraceClock`]) that notes when the task became ready to run (it
//! was woken, or it yielded through [`yield_to_siblings`]), and each poll
//! adds the time since to what is not the task's. Before the cancel the
//! task is polled as it is, at no cost.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::time::Instant;

thread_local! {
    /// Set while the future being polled yields through
    /// [`yield_to_siblings`]: it is ready to run again, only waiting its
    /// turn (tokio defers the wake-up of a yield, so the waker alone would
    /// say so only later).
    static YIELDED: Cell<bool> = const { Cell::new(false) };
}

/// Gives the worker's thread to its other tasks and asks to run again: a
/// guest's turn at an epoch tick (see `store::new_store` for why tokio's
/// `yield_now`). Marked, so that a [`GraceClock`] does not count the wait
/// for the next turn as the task's.
pub(crate) async fn yield_to_siblings() {
    YIELDED.set(true);
    tokio::task::yield_now().await;
}

/// How much of its grace period a cancelled task has had: the time since
/// its turn came, less the time it was ready to run and waiting for the
/// thread. One per cancelled task, made at its turn.
pub(crate) struct GraceClock {
    state: Mutex<State>,
}

struct State {
    /// The task's first turn after its cancel.
    turn: Instant,
    /// Time the task was ready to run and not running, up to its last
    /// poll.
    waited: Duration,
    /// Since when it has been ready to run, if it is now.
    ready_since: Option<Instant>,
    /// The waker of the task's last poll: a wake of the task's future is
    /// passed on to it.
    waker: Option<Waker>,
}

impl GraceClock {
    /// A clock started now, the task's turn.
    pub(crate) fn started() -> Arc<GraceClock> {
        Arc::new(GraceClock {
            state: Mutex::new(State {
                turn: Instant::now(),
                waited: Duration::ZERO,
                ready_since: None,
                waker: None,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned clock still tells the time: nothing in it can be half
        // written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is left of `grace` now: zero once the task has had it all.
    pub(crate) fn left(&self, grace: Duration) -> Duration {
        let now = Instant::now();
        let state = self.state();
        let waiting = state.waited + state.ready_since.map_or(Duration::ZERO, |at| now - at);
        let had = (now - state.turn).saturating_sub(waiting);
        grace.saturating_sub(had)
    }

    /// Polls the task's `future` with this clock's waker, ending the wait
    /// for the thread that this poll is.
    pub(crate) fn poll<F: Future + ?Sized>(
        self: &Arc<Self>,
        future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        {
            let mut state = self.state();
            if let Some(at) = state.ready_since.take() {
                state.waited += at.elapsed();
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
        }
        let waker = Waker::from(self.clone());
        YIELDED.set(false);
        let polled = future.poll(&mut Context::from_waker(&waker));
        if YIELDED.replace(false) && polled.is_pending() {
            self.state().ready_since.get_or_insert_with(Instant::now);
        }
        polled
    }
}

impl Wake for GraceClock {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = {
            let mut state = self.state();
            state.ready_since.get_or_insert_with(Instant::now);
            state.waker.clone()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
