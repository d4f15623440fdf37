//! The verbs that talk to a running host through its control API. Tables
//! for people, `--json` for scripts, and exit codes that tell "not found"
//! (3) from "no host" (4) from "refused" (1).

use super::ControlFileArg;
use crate::control::client::{Client, ClientError};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Subcommand)]
pub(crate) enum Verb {
    /// List the tasks of a running host.
    Tasks {
        /// Only this worker (an index, or `main`).
        #[arg(long)]
        worker: Option<String>,
        /// Only tasks in this state (pending, running, done, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only tasks of this plugin.
        #[arg(long)]
        plugin: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Show the task(s) named NAME (one per worker that has one).
    Task {
        name: String,
        /// Only this worker (an index, or `main`).
        #[arg(long)]
        worker: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Start a task of PLUGIN's FACTORY in a running host.
    Add {
        plugin: String,
        factory: String,
        /// Arguments as JSON, e.g. '{"ms": 500}'.
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Name the task (unique within its worker).
        #[arg(long)]
        name: Option<String>,
        /// The worker to run on (an index, or `main`) [default: 0].
        #[arg(long, conflicts_with = "all_workers")]
        worker: Option<String>,
        /// Start one on every worker.
        #[arg(long)]
        all_workers: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel the task(s) named NAME and wait until they have ended.
    Cancel {
        name: String,
        /// Only on this worker [default: every worker with such a task].
        #[arg(long)]
        worker: Option<String>,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Drop every ended task (done, failed, cancelled) from the registries.
    Purge {
        #[command(flatten)]
        common: Common,
    },
    /// Wake every task waiting for EVENT, handing it PAYLOAD.
    Dispatch {
        event: String,
        #[arg(default_value = "")]
        payload: String,
        /// First wait until at least N tasks are waiting for events (so a
        /// task about to wait is not missed).
        #[arg(long, value_name = "N")]
        wait_for: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Follow the host's lifecycle events (started, done, failed,
    /// cancelled, plugin loaded/refused) until it stops.
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Print the host's metrics (Prometheus / OpenMetrics text).
    Metrics {
        #[command(flatten)]
        common: Common,
    },
    /// List the plugins of a running host and their versions.
    Plugins {
        #[command(flatten)]
        common: Common,
    },
    /// Load PATH as plugin PLUGIN into a running host (new or replacing).
    ///
    /// New tasks use the new version; running ones finish on the old one. A
    /// component that does not compile or fit the world is refused and the
    /// old version keeps serving.
    Load {
        plugin: String,
        path: std::path::PathBuf,
        /// Also restart the plugin's startup tasks (from app.toml) on the
        /// new build: each is cancelled and started again.
        #[arg(long)]
        restart_tasks: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
pub(crate) struct Common {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    file: ControlFileArg,
}

pub(crate) async fn run(verb: Verb) -> ExitCode {
    match execute(verb).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(match error {
                ClientError::Refused(_) => 1,
                ClientError::NotFound(_) => 3,
                ClientError::Unreachable(_) => 4,
            })
        }
    }
}

fn connect(common: &Common) -> Result<Client, ClientError> {
    let path = common
        .file
        .path()
        .map_err(|e| ClientError::Unreachable(format!("{e:#}")))?;
    Client::from_state_file(&path)
}

/// `?a=1&b=2` from the present pairs, percent-encoding the values.
fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn worker_value(worker: &Option<String>) -> Value {
    match worker.as_deref() {
        None => Value::Null,
        Some("main") => json!("main"),
        Some(text) => text.parse::<u64>().map(Value::from).unwrap_or(json!(text)),
    }
}

async fn execute(verb: Verb) -> Result<(), ClientError> {
    match verb {
        Verb::Tasks {
            worker,
            state,
            plugin,
            common,
        } => {
            let client = connect(&common)?;
            let tasks = client
                .get(&format!(
                    "/v1/tasks{}",
                    query(&[("worker", &worker), ("state", &state), ("plugin", &plugin)])
                ))
                .await?;
            print_tasks(&tasks, common.json);
        }
        Verb::Task {
            name,
            worker,
            common,
        } => {
            let client = connect(&common)?;
            let tasks = client
                .get(&format!(
                    "/v1/tasks{}",
                    query(&[("name", &Some(name.clone())), ("worker", &worker)])
                ))
                .await?;
            if tasks.as_array().is_none_or(Vec::is_empty) {
                return Err(ClientError::NotFound(format!("no task named `{name}`")));
            }
            print_tasks(&tasks, common.json);
        }
        Verb::Add {
            plugin,
            factory,
            args,
            name,
            worker,
            all_workers,
            common,
        } => {
            let args: Value = match args {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| ClientError::Refused(format!("--args is not JSON: {e}")))?,
                None => Value::Null,
            };
            let client = connect(&common)?;
            let mut body = json!({
                "plugin": plugin, "factory": factory, "args": args, "name": name,
                "all_workers": all_workers,
            });
            if worker.is_some() {
                body["worker"] = worker_value(&worker);
            }
            let added = client.post("/v1/tasks", &body).await?;
            if common.json {
                outln!("{added}");
            } else {
                for task in added["tasks"].as_array().into_iter().flatten() {
                    outln!(
                        "started task {} on worker {}",
                        task["id"],
                        plain(&task["worker"])
                    );
                }
            }
        }
        Verb::Cancel {
            name,
            worker,
            timeout_ms,
            common,
        } => {
            let client = connect(&common)?;
            let mut body = json!({"name": name, "timeout_ms": timeout_ms});
            if worker.is_some() {
                body["worker"] = worker_value(&worker);
            }
            let ended = client.post("/v1/tasks/cancel", &body).await?;
            print_tasks(&ended, common.json);
        }
        Verb::Purge { common } => {
            let purged = connect(&common)?.post("/v1/purge", &json!({})).await?;
            if common.json {
                outln!("{purged}");
            } else {
                outln!("purged {} task(s)", purged["purged"]);
            }
        }
        Verb::Dispatch {
            event,
            payload,
            wait_for,
            common,
        } => {
            let woken = connect(&common)?
                .post(
                    &format!("/v1/events/{}", encode(&event)),
                    &json!({"payload": payload, "wait_for": wait_for}),
                )
                .await?;
            if common.json {
                outln!("{woken}");
            } else {
                outln!("woke {} task(s)", woken["woken"]);
            }
        }
        Verb::Events { count, common } => {
            let client = connect(&common)?;
            let mut seen = 0;
            client
                .follow(|event| {
                    if common.json {
                        outln!("{event}");
                    } else {
                        outln!("{}", describe_event(&event));
                    }
                    seen += 1;
                    count.is_none_or(|limit| seen < limit)
                })
                .await?;
        }
        Verb::Metrics { common } => {
            out!("{}", connect(&common)?.get_text("/metrics").await?);
        }
        Verb::Plugins { common } => {
            let plugins = connect(&common)?.get("/v1/plugins").await?;
            if common.json {
                outln!("{plugins}");
            } else {
                outln!(
                    "{:<20} {:<20} {:<10} PATH",
                    "PLUGIN",
                    "VERSION",
                    "FACTORIES"
                );
                for plugin in plugins.as_array().into_iter().flatten() {
                    outln!(
                        "{:<20} {:<20} {:<10} {}",
                        plain(&plugin["name"]),
                        plain(&plugin["version"]),
                        plugin["factories"].as_array().map_or(0, Vec::len),
                        plain(&plugin["path"])
                    );
                }
            }
        }
        Verb::Load {
            plugin,
            path,
            restart_tasks,
            common,
        } => {
            let path = std::path::absolute(&path).unwrap_or(path);
            let loaded = connect(&common)?
                .put(
                    &format!("/v1/plugins/{}", encode(&plugin)),
                    &json!({"path": path, "restart_tasks": restart_tasks}),
                )
                .await?;
            if common.json {
                outln!("{loaded}");
            } else {
                outln!(
                    "loaded {} {} from {}",
                    plain(&loaded["name"]),
                    plain(&loaded["version"]),
                    plain(&loaded["path"])
                );
                if restart_tasks {
                    outln!("restarted {} startup task(s)", loaded["restarted"]);
                }
            }
        }
    }
    Ok(())
}

/// A JSON value as table text: strings without quotes, null as `-`, and
/// control characters escaped, so a name holding ESC, CR or LF cannot
/// forge a row or take over the terminal.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => crate::logging::escape_controls(text, false).into_owned(),
        other => other.to_string(),
    }
}

fn print_tasks(tasks: &Value, as_json: bool) {
    if as_json {
        outln!("{tasks}");
        return;
    }
    outln!(
        "{:<8} {:<6} {:<24} {:<24} {:<10} OUTCOME",
        "ID",
        "WORKER",
        "NAME",
        "PLUGIN/FACTORY",
        "STATE"
    );
    for task in tasks.as_array().into_iter().flatten() {
        let outcome = match task["state"].as_str() {
            Some("done") => plain(&task["result"]),
            Some("failed") => {
                let error = task["error"].as_str().unwrap_or("");
                let first = error.lines().next().unwrap_or("");
                crate::logging::escape_controls(first, false).into_owned()
            }
            Some("cancelled") => plain(&task["cancel_stage"]),
            _ => String::new(),
        };
        outln!(
            "{:<8} {:<6} {:<24} {:<24} {:<10} {}",
            plain(&task["id"]),
            plain(&task["worker"]),
            plain(&task["name"]),
            format!("{}/{}", plain(&task["plugin"]), plain(&task["factory"])),
            plain(&task["state"]),
            outcome
        );
    }
}

fn describe_event(event: &Value) -> String {
    match event["event"].as_str() {
        Some("subscribed") => "following the host's events".to_string(),
        Some("plugin_loaded") => format!(
            "plugin {} loaded: {}",
            plain(&event["plugin"]),
            plain(&event["version"])
        ),
        Some("plugin_refused") => format!(
            "plugin {} refused: {}",
            plain(&event["plugin"]),
            plain(&event["error"])
        ),
        Some(step) => format!(
            "[{}/{}] {step} {}/{}{}",
            plain(&event["worker"]),
            plain(&event["task"]),
            plain(&event["plugin"]),
            plain(&event["factory"]),
            match step {
                "done" => format!(": {}", plain(&event["result"])),
                "failed" => format!(": {}", plain(&event["error"])),
                "cancelled" => format!(" ({})", plain(&event["stage"])),
                _ => String::new(),
            }
        ),
        None => event.to_string(),
    }
}
