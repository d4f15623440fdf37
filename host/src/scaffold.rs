//! `taskhost new LANGUAGE NAME`: a project that builds and runs at once.
//!
//! It writes `NAME/app.toml` (the plugin, built from `plugin/`, and one
//! `[[tasks]]` entry running its task), `NAME/plugin/` (a Rust crate, a
//! Python project or a JavaScript package with one task, `hello`) and
//! `NAME/README.md` (the commands). Python and JavaScript plugins get the
//! SDK from `taskhost build` itself. A Rust crate needs the SDK as a crate:
//! the one this taskhost carries (its sources and the WIT, compiled in) is
//! written into taskhost's cache and named by path, so the project builds
//! without a checkout of taskhost or a registry.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// A plugin language `taskhost new` makes projects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Language {
    Rust,
    Python,
    Js,
}

/// The Rust SDK's sources, as this taskhost was built with them.
const RUST_SDK: &[(&str, &str)] = &[
    (
        "src/__private.rs",
        include_str!("../../guest-sdk/src/__private.rs"),
    ),
    ("src/app.rs", include_str!("../../guest-sdk/src/app.rs")),
    (
        "src/connection.rs",
        include_str!("../../guest-sdk/src/connection.rs"),
    ),
    ("src/error.rs", include_str!("../../guest-sdk/src/error.rs")),
    ("src/http.rs", include_str!("../../guest-sdk/src/http.rs")),
    ("src/kv.rs", include_str!("../../guest-sdk/src/kv.rs")),
    ("src/lib.rs", include_str!("../../guest-sdk/src/lib.rs")),
    ("src/task.rs", include_str!("../../guest-sdk/src/task.rs")),
    (
        "src/variables.rs",
        include_str!("../../guest-sdk/src/variables.rs"),
    ),
];

/// The SDK crate's manifest outside taskhost's workspace: the workspace's
/// settings and versions written out.
const RUST_SDK_MANIFEST: &str = r#"[package]
name = "taskhost-guest-sdk"
description = "Write taskhost plugins as plain Rust functions"
version = "0.5.0"
edition = "2024"
license = "Apache-2.0"

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
serde_path_to_error = "0.1"
wit-bindgen = "0.61"
wasi = "0.14"
"#;

/// Makes the project `name` in `parent`; returns its directory.
pub(crate) fn new_project(language: Language, name: &str, parent: &Path) -> Result<PathBuf> {
    check_name(name)?;
    let project = match parent == Path::new(".") {
        true => PathBuf::from(name),
        false => parent.join(name),
    };
    if project.exists()
        && std::fs::read_dir(&project)
            .with_context(|| format!("cannot read {}", project.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: choose another name, or --dir for another place",
            project.display()
        );
    }
    let mut files: Vec<(String, String)> = vec![
        ("app.toml".into(), app_toml(name)),
        ("README.md".into(), readme(language, name)),
        (
            ".gitignore".into(),
            "*.wasm\n.taskhost/\n__pycache__/\nnode_modules/\n".into(),
        ),
    ];
    match language {
        Language::Rust => {
            let sdk = rust_sdk()?;
            files.push(("plugin/Cargo.toml".into(), cargo_toml(name, &sdk)));
            files.push(("plugin/src/lib.rs".into(), RUST_PLUGIN.into()));
        }
        Language::Python => {
            files.push(("plugin/pyproject.toml".into(), pyproject(name)));
            files.push(("plugin/app.py".into(), PYTHON_PLUGIN.into()));
        }
        Language::Js => {
            files.push(("plugin/package.json".into(), package_json(name)));
            files.push(("plugin/app.js".into(), JS_PLUGIN.into()));
        }
    }
    for (file, text) in &files {
        let path = project.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(project)
}

/// A name that is a directory, a plugin name, a crate and a package name
/// at once: lowercase letters, digits, `-` and `_`, starting with a letter.
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!(
            "{name:?} cannot name a project: use lowercase letters, digits, `-` and `_`, \
             starting with a letter (it names the directory, the plugin and its package)"
        );
    }
    Ok(())
}

/// Writes the Rust SDK (and the WIT it binds) into taskhost's cache, once
/// per content; returns the SDK crate's directory.
fn rust_sdk() -> Result<PathBuf> {
    let key = crate::plugin::build::content_key(
        std::iter::once(RUST_SDK_MANIFEST.as_bytes()).chain(
            RUST_SDK
                .iter()
                .flat_map(|(file, text)| [file.as_bytes(), text.as_bytes()]),
        ),
    );
    let sdk = crate::dirs::cache_home()?
        .join("sdk")
        .join(format!("rust-{key}"));
    // The SDK binds `wit` in its own directory.
    crate::plugin::build::write_wit_package(&sdk.join("wit"))?;
    std::fs::create_dir_all(sdk.join("src"))
        .with_context(|| format!("cannot create {}", sdk.display()))?;
    std::fs::write(sdk.join("Cargo.toml"), RUST_SDK_MANIFEST)?;
    for (file, text) in RUST_SDK {
        let path = sdk.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(sdk)
}

fn app_toml(name: &str) -> String {
    format!(
        r#"# {name}: `taskhost check app.toml` builds and checks it;
# `taskhost run --until-idle app.toml` runs its tasks once;
# `taskhost dev app.toml` runs it, rebuilding and restarting on every change.
# Every setting: taskhost's docs/app-toml.md.
name = "{name}"

[plugins.{name}]
build = "plugin"          # built from plugin/ whenever it changed

# What the plugin's tasks may reach (nothing by default), e.g.:
# [plugins.{name}.grants]
# http = ["https://api.example.com"]
# tcp = ["127.0.0.1:5432"]

[[tasks]]
plugin = "{name}"
factory = "hello"
name = "hello"
args = {{ who = "{name}" }}
"#
    )
}

fn readme(language: Language, name: &str) -> String {
    let source = match language {
        Language::Rust => "plugin/src/lib.rs (a Rust crate: plugin/Cargo.toml)",
        Language::Python => "plugin/app.py (a Python project: plugin/pyproject.toml)",
        Language::Js => "plugin/app.js (a JavaScript package: plugin/package.json)",
    };
    format!(
        "# {name}\n\n\
         A taskhost app with one plugin, `{name}`, whose task `hello` is in\n\
         {source}.\n\n\
         ```sh\n\
         taskhost check app.toml              # build the plugin, check app.toml and the task's arguments\n\
         taskhost run --until-idle app.toml   # run the tasks once, exit 0 if none failed\n\
         taskhost dev app.toml                # run, rebuild and restart on every change (Ctrl-C stops)\n\
         ```\n"
    )
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK of the taskhost that made this project, kept in its cache.
taskhost-guest-sdk = {{ path = "{}" }}

# A workspace of its own, even inside another one.
[workspace]
"#,
        sdk.display()
    )
}

const RUST_PLUGIN: &str = r#"use taskhost_guest_sdk::{App, Result, plugin};

plugin! {
    /// Greets `who` (default "world") and returns the greeting.
    fn hello(app: &App, who: Option<String>) -> Result<String> {
        let greeting = format!("hello, {}!", who.as_deref().unwrap_or("world"));
        app.info(&greeting);
        Ok(greeting)
    }
}
"#;

fn pyproject(name: &str) -> String {
    format!(
        r#"[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = []         # pure-Python packages only; taskhost build installs them

[tool.taskhost]
module = "app"            # the module whose @task functions are the plugin's tasks
"#
    )
}

const PYTHON_PLUGIN: &str = r#"from typing import Optional

from taskhost import App, task


@task
def hello(app: App, who: Optional[str] = None) -> str:
    """Greets `who` (default "world") and returns the greeting."""
    greeting = f"hello, {who or 'world'}!"
    app.info(greeting)
    return greeting
"#;

fn package_json(name: &str) -> String {
    format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "type": "module",
  "taskhost": {{ "main": "app.js" }}
}}
"#
    )
}

const JS_PLUGIN: &str = r#"import { task } from 'taskhost';

/** Greets `who` (default "world") and returns the greeting. */
export const hello = task(
  (app, { who }) => {
    const greeting = `hello, ${who ?? 'world'}!`;
    app.info(greeting);
    return greeting;
  },
  {
    description: 'Greets `who` (default "world") and returns the greeting.',
    args: { who: { type: 'string', default: 'world' } },
  },
);
"#;
