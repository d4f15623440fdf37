//! The one place that runs `bindgen!` for the `taskhost:plugin` world.
//!
//! Every import is async (a blocking call suspends only its task) and
//! trappable (the host can end a task from inside a call).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "taskhost:plugin/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::taskhost::plugin::types::{Error as GuestError, Level};

/// A guest error as one line of text, for logs and API errors.
pub fn describe(error: &GuestError) -> String {
    match error {
        GuestError::Cancelled => "returned `cancelled` without being cancelled".into(),
        GuestError::UnknownFactory(name) => format!("unknown factory `{name}`"),
        GuestError::InvalidArgs(message) | GuestError::Failed(message) => message.clone(),
        GuestError::NotFound(name) => format!("no task named `{name}`"),
        GuestError::DuplicateName(name) => format!("a task named `{name}` already exists"),
        GuestError::UnknownPlugin(name) => format!("no plugin named `{name}`"),
        GuestError::Limit(message) => message.clone(),
    }
}
