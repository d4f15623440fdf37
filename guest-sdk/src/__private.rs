//! What the `plugin!` macro expands to. Not part of the public API.

pub use serde;

pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "taskhost:plugin/plugin",
        pub_export_macro: true,
        export_macro_name: "__taskhost_export",
        default_bindings_module: "taskhost_guest_sdk::__private::bindings",
        // wasi:keyvalue is ours to bind: no crate of the field binds draft2.
        generate_all,
    });
}

pub use bindings::__taskhost_export as export;
pub use bindings::exports::taskhost::plugin::factories::Guest;
pub use bindings::taskhost::plugin::types::{Error as WitError, FactoryInfo};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Builds a factory's list entry; the description is the first doc line.
pub fn factory_info(name: &str, doc_lines: &[&str]) -> FactoryInfo {
    let description = doc_lines
        .iter()
        .map(|line| line.trim())
        .find(|line| !line.is_empty())
        .unwrap_or("")
        .to_string();
    FactoryInfo {
        name: name.to_string(),
        description,
    }
}

pub fn unknown_factory(name: &str) -> WitError {
    WitError::UnknownFactory(name.to_string())
}

/// Decodes a task's JSON arguments, naming the factory and the field at fault.
///
/// Empty text and `null` mean "no arguments", so factories without
/// parameters accept a task that gives none.
pub fn decode_args<T: DeserializeOwned>(factory: &str, args: &str) -> Result<T, WitError> {
    let text = match args.trim() {
        "" | "null" => "{}",
        text => text,
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = without_position(&inner);
        WitError::InvalidArgs(if path == "." {
            format!("factory `{factory}`: {message}")
        } else {
            format!("factory `{factory}`: argument `{path}`: {message}")
        })
    })
}

/// serde_json appends " at line L column C"; for one-line argument objects
/// that only adds noise to a message people read.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    if error.line() == 0 {
        return text;
    }
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_string()
}

/// Encodes a factory's return value as the task's JSON result.
pub fn encode_result<T: Serialize>(result: crate::Result<T>) -> Result<String, WitError> {
    let value = result.map_err(|error| {
        if error.is_permanent() {
            bindings::taskhost::plugin::app::stop_retrying();
        }
        error.into_wit()
    })?;
    serde_json::to_string(&value)
        .map_err(|e| WitError::Failed(format!("task result does not encode as JSON: {e}")))
}
