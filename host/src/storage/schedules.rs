//! What schedules keep across restarts: how far each one has handled its
//! ticks (so a start knows which ticks fell while the host was down, for
//! `catch_up`), whether an operator paused it, and the schedules guests
//! added at run time.

use super::tasks::TaskStoreFuture;

/// A schedule's progress, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleMark {
    /// Every tick up to this time (Unix ms) was handled: run, skipped or
    /// counted as missed.
    pub seen_until_ms: u64,
    /// Paused by an operator: written before the pause or resume is
    /// acknowledged, so a restart keeps it paused.
    pub paused: bool,
}

/// A backend for schedules' state.
pub trait ScheduleStore: Send + Sync + 'static {
    /// The mark of schedule `name`, if it ever ran on this storage.
    fn schedule_mark<'a>(&'a self, name: &'a str) -> TaskStoreFuture<'a, Option<ScheduleMark>>;

    /// Records `mark` for schedule `name`.
    fn set_schedule_mark<'a>(
        &'a self,
        name: &'a str,
        mark: ScheduleMark,
    ) -> TaskStoreFuture<'a, ()>;

    /// Schedules added at run time (by guests): name and spec (JSON).
    fn added_schedules(&self) -> TaskStoreFuture<'_, Vec<(String, String)>>;

    /// Records (or replaces) a schedule added at run time.
    fn add_schedule<'a>(&'a self, name: &'a str, spec: &'a str) -> TaskStoreFuture<'a, ()>;

    /// Forgets a schedule added at run time, and its mark; whether there
    /// was one.
    fn remove_schedule<'a>(&'a self, name: &'a str) -> TaskStoreFuture<'a, bool>;
}
