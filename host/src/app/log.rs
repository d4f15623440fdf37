//! `app.log(level, message)`.

use super::AppState;
use crate::bindings::Level;

impl AppState {
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
