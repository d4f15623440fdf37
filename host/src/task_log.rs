//! Each task's log lines, kept so they can be read back after the fact
//! (`taskhost logs TASK`, `GET /v1/tasks/{id}/logs`, the dashboard), not
//! only seen as they scroll by on stdout.
//!
//! Two bounds: a task keeps its last `[limits] task_log_lines` lines, and
//! all tasks together keep at most `[limits] task_log_bytes`, the oldest
//! line host-wide going first. A task's lines live as long as its record
//! in its worker's registry (they hang off its cancel signal, which the
//! record holds), so an ended task's lines go when it is purged or pushed
//! out of the registry, with nothing to sweep.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// What one kept line costs beyond its message's bytes (its place in the
/// task's queue and in the book's order, its level, time and number).
const LINE_OVERHEAD: usize = 64;

/// One line a task logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// Its number in the task's log, from 1: a reader asks for the lines
    /// after the last it saw.
    pub(crate) seq: u64,
    /// When it was logged, in milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub(crate) level: &'static str,
    pub(crate) message: String,
}

impl LogLine {
    fn cost(&self) -> usize {
        self.message.len() + LINE_OVERHEAD
    }
}

/// The lines all tasks keep, against `task_log_bytes`.
pub(crate) struct LogBook {
    /// Lines one task keeps.
    per_task: usize,
    /// Bytes all tasks' lines may take.
    budget: usize,
    /// Bytes all tasks' kept lines take now.
    bytes: AtomicUsize,
    /// Entries of `order` whose line is gone already (dropped by its
    /// task's own bound, or with its task).
    stale: AtomicUsize,
    /// Every kept line's task and number, oldest first: what goes when
    /// `bytes` is over the budget.
    order: Mutex<VecDeque<(Weak<TaskLog>, u64)>>,
}

impl LogBook {
    pub(crate) fn new(per_task: usize, budget: usize) -> Arc<LogBook> {
        Arc::new(LogBook {
            per_task: per_task.max(1),
            budget,
            bytes: AtomicUsize::new(0),
            stale: AtomicUsize::new(0),
            order: Mutex::default(),
        })
    }

    /// Bytes all tasks' kept lines take now.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn order(&self) -> MutexGuard<'_, VecDeque<(Weak<TaskLog>, u64)>> {
        self.order.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the oldest lines host-wide while over the budget, and the
    /// stale entries of `order` once they are most of it. Called with
    /// `order` locked; locks each task it drops a line of (book, then
    /// task: the one order both locks are taken in).
    fn trim(&self, order: &mut VecDeque<(Weak<TaskLog>, u64)>) {
        while self.bytes.load(Ordering::Relaxed) > self.budget {
            let Some((task, seq)) = order.pop_front() else {
                break;
            };
            let dropped = task.upgrade().is_some_and(|task| {
                let mut lines = task.lines();
                if lines.kept.front().is_some_and(|line| line.seq == seq) {
                    let line = lines.kept.pop_front().expect("a front line");
                    lines.dropped += 1;
                    self.bytes.fetch_sub(line.cost(), Ordering::Relaxed);
                    true
                } else {
                    false
                }
            });
            if !dropped {
                self.stale.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let stale = self.stale.load(Ordering::Relaxed);
        if stale > 1024 && stale * 2 > order.len() {
            order.retain(|(task, seq)| {
                let live = task
                    .upgrade()
                    .is_some_and(|task| task.lines().kept.front().is_some_and(|l| l.seq <= *seq));
                if !live {
                    self.stale.fetch_sub(1, Ordering::Relaxed);
                }
                live
            });
        }
    }
}

/// One task's kept lines.
pub(crate) struct TaskLog {
    book: Arc<LogBook>,
    lines: Mutex<Lines>,
    /// Told when a line is added: who follows the log reads on.
    added: tokio::sync::Notify,
}

struct Lines {
    kept: VecDeque<LogLine>,
    /// The number the next line gets.
    next: u64,
    /// Lines no longer kept (the oldest, past either bound).
    dropped: u64,
}

/// What a reader gets: the kept lines after the one it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogPage {
    pub(crate) lines: Vec<LogLine>,
    /// The task's lines no longer kept, all older than the first kept.
    pub(crate) dropped: u64,
    /// The number of the task's last line so far (0: none yet).
    pub(crate) last: u64,
}

impl TaskLog {
    pub(crate) fn new(book: &Arc<LogBook>) -> Arc<TaskLog> {
        Arc::new(TaskLog {
            book: book.clone(),
            lines: Mutex::new(Lines {
                kept: VecDeque::new(),
                next: 1,
                dropped: 0,
            }),
            added: tokio::sync::Notify::new(),
        })
    }

    fn lines(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a line, dropping this task's oldest past `task_log_lines`
    /// and the host's oldest past `task_log_bytes`.
    pub(crate) fn push(self: &Arc<Self>, level: &'static str, message: &str) {
        let book = &self.book;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut order = book.order();
        let seq = {
            let mut lines = self.lines();
            let seq = lines.next;
            lines.next += 1;
            let line = LogLine {
                seq,
                at_ms,
                level,
                message: message.to_string(),
            };
            book.bytes.fetch_add(line.cost(), Ordering::Relaxed);
            lines.kept.push_back(line);
            while lines.kept.len() > book.per_task {
                let old = lines.kept.pop_front().expect("over the bound");
                lines.dropped += 1;
                book.bytes.fetch_sub(old.cost(), Ordering::Relaxed);
                book.stale.fetch_add(1, Ordering::Relaxed);
            }
            seq
        };
        order.push_back((Arc::downgrade(self), seq));
        book.trim(&mut order);
        drop(order);
        self.added.notify_waiters();
    }

    /// The kept lines numbered after `after`, at most `limit` of them.
    pub(crate) fn page(&self, after: u64, limit: usize) -> LogPage {
        let lines = self.lines();
        LogPage {
            lines: lines
                .kept
                .iter()
                .filter(|line| line.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            dropped: lines.dropped,
            last: lines.next - 1,
        }
    }

    /// Resolves once a line is added after `after` (at once if one was).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a new call sees what this one would have.
    pub(crate) async fn added_after(&self, after: u64) {
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if self.lines().next - 1 > after {
                return;
            }
            added.await;
        }
    }
}

impl Drop for TaskLog {
    /// The task's record went: its lines leave the book (their entries in
    /// its order go stale; no lock here, as this may run inside `trim`).
    fn drop(&mut self) {
        let lines = self.lines.get_mut().unwrap_or_else(PoisonError::into_inner);
        let bytes: usize = lines.kept.iter().map(LogLine::cost).sum();
        self.book.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.book
            .stale
            .fetch_add(lines.kept.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(page: &LogPage) -> Vec<&str> {
        page.lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn a_task_keeps_its_last_lines_numbered_and_counts_the_rest() {
        let book = LogBook::new(3, usize::MAX);
        let log = TaskLog::new(&book);
        for i in 1..=5 {
            log.push("info", &format!("line {i}"));
        }
        let page = log.page(0, 100);
        assert_eq!(messages(&page), ["line 3", "line 4", "line 5"]);
        assert_eq!((page.dropped, page.last), (2, 5));
        assert_eq!(messages(&log.page(4, 100)), ["line 5"]);
        assert_eq!(messages(&log.page(0, 1)), ["line 3"]);
        assert_eq!(book.bytes(), 3 * ("line 3".len() + LINE_OVERHEAD));
        drop(log);
        assert_eq!(book.bytes(), 0);
    }

    #[test]
    fn over_the_budget_the_oldest_line_host_wide_goes_first() {
        let cost = "aaaa".len() + LINE_OVERHEAD;
        let book = LogBook::new(100, 3 * cost);
        let first = TaskLog::new(&book);
        let second = TaskLog::new(&book);
        first.push("info", "a001");
        second.push("info", "b001");
        first.push("info", "a002");
        second.push("info", "b002");
        assert_eq!(messages(&first.page(0, 10)), ["a002"]);
        assert_eq!(messages(&second.page(0, 10)), ["b001", "b002"]);
        assert_eq!(book.bytes(), 3 * cost);
        // A task that goes frees its room for the others' lines.
        drop(second);
        assert_eq!(book.bytes(), cost);
        first.push("info", "a003");
        first.push("info", "a004");
        assert_eq!(messages(&first.page(0, 10)), ["a002", "a003", "a004"]);
    }

    #[test]
    fn stale_entries_are_swept_and_do_not_pile_up() {
        let book = LogBook::new(1, usize::MAX);
        let log = TaskLog::new(&book);
        for i in 0..10_000 {
            log.push("info", &format!("{i}"));
        }
        // One line kept; the order holds far fewer than 10,000 entries.
        assert_eq!(log.page(0, 10).lines.len(), 1);
        assert!(book.order().len() <= 2049, "{}", book.order().len());
    }

    #[tokio::test]
    async fn a_follower_wakes_when_a_line_is_added() {
        let book = LogBook::new(10, usize::MAX);
        let log = TaskLog::new(&book);
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.added_after(0).await })
        };
        tokio::task::yield_now().await;
        log.push("warn", "now");
        waiter.await.unwrap();
        // A line already there: no wait.
        log.added_after(0).await;
    }
}
