//! `app.log(level, message)`.

use super::TaskData;
use crate::bindings::Level;

impl TaskData {
    /// Never fails, even while the task is being cancelled: cleanup code
    /// must be able to say what it did.
    pub(super) fn app_log(&self, level: Level, message: &str) {
        crate::logging::task_line(&self.ident, level, message);
    }
}
