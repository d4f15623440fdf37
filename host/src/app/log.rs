//! `app.log(level, message)`, and the rate limit of every line a task logs.

use super::TaskData;
use crate::bindings::Level;
use crate::config::Limits;
use crate::task::TaskIdent;
use std::sync::{Arc, Mutex};
use std::time::Instant;

impl TaskData {
    /// Never fails, even while the task is being cancelled: cleanup code
    /// must be able to say what it did.
    ///
    /// Lines longer than `[limits] log_line_bytes` are cut (at a character
    /// boundary) and say how much was dropped.
    pub(super) fn app_log(&self, level: Level, message: &str) {
        let limit = self.app.limits.log_line_bytes;
        if message.len() <= limit {
            self.log.line(level, message);
            return;
        }
        let mut end = limit;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let cut = format!(
            "{} [truncated {} bytes]",
            &message[..end],
            message.len() - end
        );
        self.log.line(level, &cut);
    }
}

/// Every line one task logs (through `app.log`, stdout or stderr) passes
/// here: a token bucket of `log_burst_lines` refilled at
/// `log_lines_per_second`. A task ignoring cancellation wrote 95,000 lines
/// in a 500 ms grace period before this; now it writes the burst, then the
/// rate, and one line says how many it lost.
pub struct LogGate {
    ident: Arc<TaskIdent>,
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl LogGate {
    pub fn new(ident: Arc<TaskIdent>, limits: &Limits) -> LogGate {
        let burst = f64::from(limits.log_burst_lines);
        LogGate {
            ident,
            rate: f64::from(limits.log_lines_per_second),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                refilled: Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// Logs `message` as a line of the task, unless it is over its rate.
    pub fn line(&self, level: Level, message: &str) {
        let dropped = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let earned = now.duration_since(bucket.refilled).as_secs_f64() * self.rate;
            bucket.tokens = (bucket.tokens + earned).min(self.burst);
            bucket.refilled = now;
            if bucket.tokens < 1.0 {
                bucket.dropped += 1;
                return;
            }
            bucket.tokens -= 1.0;
            std::mem::take(&mut bucket.dropped)
        };
        if dropped > 0 {
            self.report_dropped(dropped);
        }
        crate::logging::task_line(&self.ident, level, message);
    }

    fn report_dropped(&self, dropped: u64) {
        crate::logging::task_line(
            &self.ident,
            Level::Warn,
            &format!(
                "{dropped} log line(s) dropped: more than {} per second after a burst of {} \
                 ([limits] log_lines_per_second, log_burst_lines)",
                self.rate, self.burst
            ),
        );
    }
}

impl Drop for LogGate {
    /// The task ended while over its rate: say what it lost.
    fn drop(&mut self) {
        let dropped = self
            .bucket
            .get_mut()
            .map(|b| b.dropped)
            .unwrap_or_else(|e| e.into_inner().dropped);
        if dropped > 0 {
            self.report_dropped(dropped);
        }
    }
}
