//! `app.name()`, `app.worker()`, `app.config(key)`: what a task knows about
//! where it runs.

use super::AppState;

impl AppState {
    pub(super) fn app_name(&self) -> String {
        self.app.name.clone()
    }

    pub(super) fn app_worker(&self) -> Option<u32> {
        self.ident.worker.index()
    }

    pub(super) fn app_config(&self, key: &str) -> Option<String> {
        self.app.config_json(key).map(str::to_owned)
    }
}
