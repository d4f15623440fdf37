//! The verbs that talk to a running host through its control API. Tables
//! for people, `--json` for scripts, and exit codes that tell "not found"
//! (3) from "no host" (4) from "refused" (1).

use super::{ControlFileArg, Exit};
use crate::control::client::{Client, ClientError};
use crate::control::routes;
use crate::lifecycle::{LifecycleEvent, TaskRef};
use crate::operations::types::{
    BuildState, CancelRequest, DispatchRequest, KeysQuery, KvPut, LoadRequest, LogsQuery,
    PluginView, ScheduleView, Submission, TaskFilter, Triggered, WaitRequest,
};
use crate::task::{TaskState, TaskView, WorkerId};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub(crate) enum Verb {
    /// List the tasks of a running host, with a count by state.
    Tasks {
        /// Only this worker (an index, or `main`).
        #[arg(long)]
        worker: Option<WorkerId>,
        /// Only tasks in this state.
        #[arg(long, value_parser = STATES)]
        state: Option<String>,
        /// Only tasks of this plugin.
        #[arg(long)]
        plugin: Option<String>,
        /// Show only the N newest tasks (the count by state still counts
        /// them all).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Every host of the cluster's tasks, each with its host.
        #[arg(long)]
        cluster: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show the task(s) named NAME (one per worker that has one).
    Task {
        name: String,
        /// Only this worker (an index, or `main`).
        #[arg(long)]
        worker: Option<WorkerId>,
        /// On every host of the cluster.
        #[arg(long)]
        cluster: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Say whether the host is healthy: `ok`, or `degraded` and why (in a
    /// cluster: NATS unreachable). Exits 1 when degraded.
    Health {
        #[command(flatten)]
        common: Common,
    },
    /// List the hosts of this host's cluster, as their heartbeats say:
    /// version, workers, live tasks, room for more (what `any` follows),
    /// and whether it takes requests (no while starting or stopping).
    Hosts {
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
        worker: Option<WorkerId>,
        /// Start one on every worker.
        #[arg(long)]
        all_workers: bool,
        /// Try it up to N times in all if it fails, waiting 200 ms, then
        /// twice as long each time (up to 1 min).
        #[arg(long, value_name = "N")]
        retry: Option<u32>,
        /// Record it in the app's storage before it starts, and run it
        /// again after a crash until it ends (at least once; its outcome is
        /// kept across restarts).
        #[arg(long)]
        durable: bool,
        /// Durable, and after a crash resumed from the journal of its host
        /// calls instead of run again from its start: what it did is not
        /// done again (docs/durable.md). Implies --durable.
        #[arg(long)]
        resume: bool,
        /// With --durable: a second `add` with the same KEY starts nothing
        /// and shows the first one's task.
        #[arg(
            long,
            value_name = "KEY",
            requires = "durable",
            conflicts_with = "all_workers"
        )]
        idempotency_key: Option<String>,
        /// In a cluster: run it on HOST, on `any` one (NATS picks), or on
        /// `all` hosts present (docs/cluster.md) [default: this host].
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Where --name must be unique: its worker, or every host of the
        /// cluster (`cluster`: a second task of that name anywhere is
        /// refused) [default: worker].
        #[arg(long, value_parser = ["worker", "cluster"], requires = "name")]
        scope: Option<String>,
        /// A W3C traceparent (`00-<trace id>-<span id>-01`): the task's
        /// span joins that trace ([telemetry], docs/telemetry.md).
        #[arg(long, value_name = "HEADER")]
        traceparent: Option<String>,
        #[command(flatten)]
        restart: Box<RestartFlags>,
        #[command(flatten)]
        queue: Box<QueueFlags>,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel the task(s) named NAME and wait until they have ended.
    Cancel {
        name: String,
        /// Only on this worker [default: every worker with such a task].
        #[arg(long)]
        worker: Option<WorkerId>,
        /// On every host of the cluster that has such a task.
        #[arg(long)]
        cluster: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Wait until TASK has ended and show it, its result or error
    /// included. Exits 0 if it ended done; 1 if it failed or was cancelled,
    /// or had not ended within --timeout-ms (it goes on); 3 if the host has
    /// no such task.
    Wait {
        /// The task's id on the host (digits only), or its name.
        task: String,
        /// With a name that tasks of several workers have: this worker's
        /// task.
        #[arg(long)]
        worker: Option<WorkerId>,
        /// Give up waiting after this long (at most an hour).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Print a task's kept log lines: what it logged through `app.log`,
    /// stdout and stderr, with their times and levels.
    ///
    /// A task keeps its last `[limits] task_log_lines` lines (1,000), and
    /// all tasks together at most `task_log_bytes` (64 MiB); an ended
    /// task's lines go when it is purged. With --follow, new lines are
    /// printed as they come until the task ends. With --json, one line
    /// of JSON per log line (`seq`, `at_ms`, `level`, `message`).
    Logs {
        /// The task's id on the host (digits only), or its name.
        task: String,
        /// With a name that tasks of several workers have: this worker's
        /// task.
        #[arg(long)]
        worker: Option<WorkerId>,
        /// Keep printing new lines until the task ends.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show a resuming task's journal (`durable = "resume"`, `add
    /// --resume`): each host call it made, in order, with when, how long
    /// it took and the size of its recorded answer. After a crash the task
    /// replays these steps instead of performing them again
    /// (docs/durable.md). With --json, the API's answer.
    Journal {
        /// The task's id on the host (digits only), or its name.
        task: String,
        /// With a name that tasks of several workers have: this worker's
        /// task.
        #[arg(long)]
        worker: Option<WorkerId>,
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
    /// Follow the host's lifecycle stream (tasks started, done, failed,
    /// cancelled; plugin builds loaded, refused, dropped) until it stops.
    ///
    /// `events` is the old name of this verb, kept as an alias for one
    /// release. With --json the first line is `{"event":"subscribed"}`:
    /// from then on nothing is missed. It is not counted by --count.
    #[command(visible_alias = "events")]
    Stream {
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Print the host's metrics (Prometheus / OpenMetrics text).
    Metrics {
        #[command(flatten)]
        common: Common,
    },
    /// Inspect and repair key-value state: list buckets or keys, get, set
    /// or delete a key.
    ///
    /// A plugin's own bucket is PLUGIN/NAME (what its tasks open as NAME); a
    /// shared bucket is NAME.
    Kv {
        #[command(subcommand)]
        action: KvAction,
    },
    /// List the loaded plugin builds: the one each plugin serves new tasks
    /// from, and older ones still draining their tasks after a hot-load.
    Plugins {
        /// Every host of the cluster's builds, each with its host.
        #[arg(long)]
        cluster: bool,
        #[command(flatten)]
        common: Common,
    },
    /// List the schedules of a running host: when each runs next, how its
    /// last run went, how many runs and misses it counts.
    Schedules {
        #[command(flatten)]
        common: Common,
    },
    /// Pause, resume or trigger the schedule NAME of a running host.
    ///
    /// A pause holds across restarts (ticks while paused are neither run
    /// nor missed); `trigger` runs it now, paused or not, unless its last
    /// run is still going and its `overlap` is "skip" (exit 1).
    Schedule {
        #[arg(value_parser = ["pause", "resume", "trigger"])]
        action: String,
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// List the queues of a running host: tasks waiting (and delayed),
    /// running, started per second, the oldest wait, dead letters, limits,
    /// and the keys with the most waiting.
    Queues {
        #[command(flatten)]
        common: Common,
    },
    /// Steer the queue NAME of a running host: `pause` (no task starts),
    /// `drain` (no task is taken in; those waiting go on), `resume` (undo
    /// both), `reset` (back to app.toml: undo both and drop the limits
    /// changed at run time), or `set` its limits.
    ///
    /// Each holds across restarts. `set` changes only the limits given:
    /// `taskhost queue set crm --concurrency 8 --rate 20/s`; 0 (or `off`
    /// for a rate) removes a bound.
    Queue {
        #[arg(value_parser = ["pause", "resume", "drain", "reset", "set"])]
        action: String,
        name: String,
        #[command(flatten)]
        limits: Box<LimitFlags>,
        #[command(flatten)]
        common: Common,
    },
    /// List dead letters (queued tasks that failed their last attempt),
    /// of QUEUE or of every queue; or `retry ID` (submit it again, to its
    /// queue, and drop it) or `discard ID` (drop it).
    #[command(args_conflicts_with_subcommands = true)]
    Dead {
        /// Only this queue's letters.
        queue: Option<String>,
        /// Letters with an id above N (the last page's end).
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        /// At most N letters [default: 100, at most 1000].
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        #[command(subcommand)]
        action: Option<DeadAction>,
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
        /// new build: each is cancelled and started again (with --cluster,
        /// on every host). Tasks with `on_load = "restart"` (app.toml, or
        /// `add --on-load restart`) move to a new build on any load.
        #[arg(long)]
        restart_tasks: bool,
        /// Roll the build out to every host of the cluster: loaded on this
        /// host first (a build it refuses goes nowhere), then put in the
        /// cluster's object store, from which every host (and every host
        /// that joins later) loads it after checking its digest. Prints
        /// what each host did; exits 1 if any refused it or did not say.
        #[arg(long)]
        cluster: bool,
        #[command(flatten)]
        common: Common,
    },
}

/// What `taskhost dead` does to one letter.
#[derive(clap::Subcommand)]
pub(crate) enum DeadAction {
    /// Submit letter ID again (its queue, key, priority and retry policy)
    /// and drop it; a refused submission leaves it.
    Retry {
        id: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Drop letter ID.
    Discard {
        id: u64,
        #[command(flatten)]
        common: Common,
    },
}

/// `taskhost queue set`'s limits: each given replaces the queue's.
#[derive(clap::Args, Debug)]
pub(crate) struct LimitFlags {
    /// At most N of its tasks running at once (0: no bound).
    #[arg(long, value_name = "N")]
    concurrency: Option<u32>,
    /// At most N waiting.
    #[arg(long, value_name = "N")]
    max_waiting: Option<u64>,
    /// At most N running per key (0: no bound).
    #[arg(long, value_name = "N")]
    per_key: Option<u32>,
    /// Starts per period: COUNT/PERIOD (`10/s`, `600/m`, `5/10s`), or `off`.
    #[arg(long, value_name = "RATE")]
    rate: Option<String>,
    /// Starts allowed at once after a quiet spell.
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
    /// Each key's starts per period, or `off`.
    #[arg(long, value_name = "RATE")]
    key_rate: Option<String>,
    /// The key rate's burst.
    #[arg(long, value_name = "N")]
    key_burst: Option<u32>,
}

/// `taskhost add`'s supervision options (docs/tasks.md, "Supervised
/// tasks"); the API's `restart` also sets the backoff.
#[derive(clap::Args, Debug)]
pub(crate) struct RestartFlags {
    /// Start it again each time it ends: `always` (done or failed), or
    /// `on-failure` (after its --retry attempts). Not after a cancel, nor
    /// after a failure that would fail the same way (a denied HTTP
    /// origin, `stop-retrying`). The wait doubles from 1 s to 1 min, and
    /// starts over after a run of a minute or more.
    #[arg(long, value_name = "WHEN", value_parser = ["always", "on-failure"], conflicts_with = "durable")]
    restart: Option<String>,
    /// With --restart: more than N restarts within --restart-period end
    /// the task failed instead [default: 5].
    #[arg(long, value_name = "N", requires = "restart")]
    restart_intensity: Option<u32>,
    /// With --restart: the window --restart-intensity counts restarts in
    /// (`30s`, `10m`) [default: 1m].
    #[arg(long, value_name = "DURATION", requires = "restart")]
    restart_period: Option<String>,
    /// What a newer build of PLUGIN (`load`, `--watch`, `load --cluster`)
    /// does to this task: `drain` (it finishes on its build) or `restart`
    /// (cancelled cooperatively, then started again on the new build)
    /// [default: the plugin's `on_load` in app.toml, else drain].
    #[arg(long, value_name = "WHEN", value_parser = ["drain", "restart"])]
    on_load: Option<String>,
}

impl RestartFlags {
    /// The policy as the API takes it; none without --restart.
    fn spec(&self) -> Option<crate::config::RestartSpec> {
        let when = self.restart.as_deref()?.parse().ok()?;
        Some(crate::config::RestartSpec {
            intensity: self.restart_intensity,
            period: self.restart_period.clone(),
            ..crate::config::RestartSpec::new(when)
        })
    }
}

/// `taskhost add`'s queue options (docs/queues.md).
#[derive(clap::Args, Debug)]
pub(crate) struct QueueFlags {
    /// Wait in QUEUE (app.toml's [[queues]], or `default`) until the
    /// queue lets it start, instead of starting at once: its state is
    /// `queued` meanwhile, and it is refused only when QUEUE already
    /// holds `max_waiting` tasks (docs/queues.md). With --durable it
    /// waits durably: a restart puts it back in QUEUE, keeping its time.
    #[arg(long, value_name = "QUEUE")]
    queue: Option<String>,
    /// Its key in its queue: the queue's `per_key` and `key_rate` bound
    /// each key's tasks, keys take turns, and a `dedupe` queue starts
    /// nothing while KEY has a task waiting [default: from the queue's
    /// `key_arg`]. Without --queue: the `default` queue.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// From -100 to 100; higher starts first, and a task waiting
    /// gains one each `ageing` of its queue [default: 0]. Without
    /// --queue: the `default` queue.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<i64>,
    /// Start no sooner than DURATION from now (`30s`, `10m`, `2h`),
    /// waiting in its queue meanwhile. Without --queue: the `default`
    /// queue.
    #[arg(long, value_name = "DURATION", conflicts_with = "run_at")]
    delay: Option<String>,
    /// Start no sooner than TIME (RFC 3339: `2026-12-05T14:30:00Z`).
    /// Without --queue: the `default` queue.
    #[arg(long, value_name = "TIME")]
    run_at: Option<String>,
}

/// The states `--state` takes: [`TaskState`]'s serde names.
const STATES: [&str; 5] = ["pending", "running", "done", "failed", "cancelled"];

#[derive(Args)]
pub(crate) struct Common {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    file: ControlFileArg,
}

pub(crate) async fn run(verb: Verb) -> Exit {
    match execute(verb).await {
        Ok(()) => Exit::Ok,
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                ClientError::Failed(failed) if failed.kind.exit_code() == Exit::NotFound as u8 => {
                    Exit::NotFound
                }
                ClientError::Failed(_) => Exit::Failed,
                ClientError::Unreachable(_) => Exit::Unreachable,
            }
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

/// Prints `value` as one line of JSON.
fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => outln!("{text}"),
        Err(error) => eprintln!("error: cannot encode the answer: {error}"),
    }
}

async fn execute(verb: Verb) -> Result<(), ClientError> {
    match verb {
        Verb::Tasks {
            worker,
            state,
            plugin,
            limit,
            cluster,
            common,
        } => {
            let filter = TaskFilter {
                worker: worker.map(|w| w.to_string()),
                state: parse_state(state)?,
                plugin,
                ..TaskFilter::default()
            };
            let tasks = list_tasks(&connect(&common)?, cluster, &filter).await?;
            let shown = &tasks[tasks.len() - limit.unwrap_or(tasks.len()).min(tasks.len())..];
            if common.json {
                print_json(&shown);
            } else {
                print_tasks(shown);
                outln!("{}", summary(&tasks, shown.len()));
            }
        }
        Verb::Task {
            name,
            worker,
            cluster,
            common,
        } => {
            let filter = TaskFilter {
                worker: worker.map(|w| w.to_string()),
                name: Some(name.clone()),
                ..TaskFilter::default()
            };
            let tasks = list_tasks(&connect(&common)?, cluster, &filter).await?;
            if tasks.is_empty() {
                return Err(ClientError::not_found(format!("no task named `{name}`")));
            }
            if common.json {
                print_json(&tasks);
            } else {
                print_tasks(&tasks);
            }
        }
        Verb::Add {
            plugin,
            factory,
            args,
            name,
            worker,
            all_workers,
            retry,
            durable,
            resume,
            idempotency_key,
            host,
            scope,
            traceparent,
            restart,
            queue,
            common,
        } => {
            let QueueFlags {
                queue,
                key,
                priority,
                delay,
                run_at,
            } = *queue;
            let args = match args {
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| ClientError::refused(format!("--args is not JSON: {e}")))?,
                None => serde_json::Value::Null,
            };
            let request = Submission {
                plugin,
                factory,
                args,
                name,
                worker,
                all_workers,
                retry: retry.map(|attempts| crate::config::RetrySpec {
                    attempts,
                    backoff: None,
                    initial: None,
                    max: None,
                    jitter: None,
                }),
                on_load: restart
                    .on_load
                    .as_deref()
                    .map(|text| text.parse().expect("clap allows only drain and restart")),
                restart: restart.spec(),
                durable: match (durable, resume) {
                    (_, true) => crate::config::Durability::Resume,
                    (true, false) => crate::config::Durability::Rerun,
                    (false, false) => crate::config::Durability::None,
                },
                idempotency_key,
                host,
                scope: match scope.as_deref() {
                    Some("cluster") => crate::operations::types::NameScope::Cluster,
                    _ => crate::operations::types::NameScope::Worker,
                },
                queue,
                key,
                priority,
                delay,
                run_at,
                traceparent,
            };
            let added = connect(&common)?
                .call(&routes::SUBMIT, &[], &request)
                .await?;
            if common.json {
                print_json(&added);
            } else {
                for task in &added.tasks {
                    let name = task
                        .name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    let place = match &task.host {
                        Some(host) => format!("host {host}, worker {}", task.worker),
                        None => format!("worker {}", task.worker),
                    };
                    if task.created {
                        outln!("started task {}{name} on {place}", task.id);
                    } else {
                        outln!(
                            "task {}{name} on {place} has that idempotency key: nothing started",
                            task.id,
                        );
                    }
                }
            }
        }
        Verb::Cancel {
            name,
            worker,
            cluster,
            timeout_ms,
            common,
        } => {
            let request = CancelRequest {
                name,
                worker,
                timeout_ms: Some(timeout_ms),
            };
            let client = connect(&common)?;
            let ended: Vec<TaskView> = if cluster {
                from_hosts(client.call(&routes::CLUSTER_CANCEL, &[], &request).await?)?
            } else {
                client.call(&routes::CANCEL, &[], &request).await?
            };
            if common.json {
                print_json(&ended);
            } else {
                print_tasks(&ended);
            }
        }
        Verb::Logs {
            task,
            worker,
            follow,
            common,
        } => {
            let client = connect(&common)?;
            let id = task_id(&client, &task, worker).await?;
            print_logs(&client, id, follow, common.json).await?;
        }
        Verb::Journal {
            task,
            worker,
            common,
        } => {
            let client = connect(&common)?;
            let id = task_id(&client, &task, worker).await?;
            let journal = client
                .call(&routes::TASK_JOURNAL, &[&id.to_string()], &())
                .await?;
            if common.json {
                print_json(&journal);
            } else {
                outln!(
                    "{:>5}  {:<24}  {:>10}  {:>9}  call",
                    "step",
                    "at",
                    "took",
                    "bytes"
                );
                for step in &journal.steps {
                    let at = chrono::DateTime::from_timestamp_millis(step.at_ms as i64)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                        .unwrap_or_default();
                    outln!(
                        "{:>5}  {at:<24}  {:>8.3}ms  {:>9}  {}",
                        step.index,
                        step.micros as f64 / 1e3,
                        step.bytes,
                        clean(&step.call)
                    );
                }
                outln!(
                    "{} step(s), {} bytes (task {id})",
                    journal.steps.len(),
                    journal.bytes
                );
            }
        }
        Verb::Wait {
            task,
            worker,
            timeout_ms,
            common,
        } => {
            let (id, name) = match task.parse::<u64>() {
                Ok(id) => (Some(id), None),
                Err(_) => (None, Some(task)),
            };
            let request = WaitRequest {
                id,
                name,
                worker,
                timeout_ms: Some(timeout_ms),
            };
            let ended = connect(&common)?.call(&routes::WAIT, &[], &request).await?;
            if common.json {
                print_json(&ended);
            } else {
                print_tasks(std::slice::from_ref(&ended));
            }
            if ended.state != TaskState::Done {
                let why = match (&ended.error, ended.cancel_stage) {
                    (Some(error), _) => format!(": {}", headline(error)),
                    (None, Some(stage)) => format!(" ({})", stage.as_str()),
                    (None, None) => String::new(),
                };
                return Err(ClientError::refused(format!(
                    "task {} ended {}{why}",
                    ended.id, ended.state
                )));
            }
        }
        Verb::Health { common } => {
            let health = connect(&common)?.call(&routes::HEALTH, &[], &()).await?;
            if common.json {
                print_json(&health);
            } else {
                outln!("{}", health.status);
                for problem in &health.problems {
                    outln!("  {problem}");
                }
            }
            if health.status != "ok" {
                return Err(ClientError::refused(format!(
                    "the host is {}",
                    health.status
                )));
            }
        }
        Verb::Hosts { common } => {
            let hosts = connect(&common)?.call(&routes::HOSTS, &[], &()).await?;
            if common.json {
                print_json(&hosts);
            } else {
                let rows = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            clean(&h.host),
                            clean(&h.version),
                            h.workers.to_string(),
                            h.live_tasks.to_string(),
                            h.room.to_string(),
                            if h.serving { "yes" } else { "no" }.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "HOST",
                        "VERSION",
                        "WORKERS",
                        "LIVE TASKS",
                        "ROOM",
                        "SERVING",
                    ],
                    rows,
                );
            }
        }
        Verb::Purge { common } => {
            let purged = connect(&common)?.call(&routes::PURGE, &[], &()).await?;
            if common.json {
                print_json(&purged);
            } else {
                outln!("purged {} task(s)", purged.purged);
            }
        }
        Verb::Dispatch {
            event,
            payload,
            wait_for,
            common,
        } => {
            let request = DispatchRequest {
                payload,
                wait_for,
                timeout_ms: None,
            };
            let woken = connect(&common)?
                .call(&routes::DISPATCH, &[&event], &request)
                .await?;
            if common.json {
                print_json(&woken);
            } else {
                outln!("woke {} task(s)", woken.woken);
            }
        }
        Verb::Stream { count, common } => {
            let client = connect(&common)?;
            let mut seen = 0;
            let follow = client.follow(|event| {
                if event == LifecycleEvent::Subscribed {
                    if common.json {
                        print_json(&event);
                    } else {
                        eprintln!("following the host's lifecycle stream");
                    }
                    return count != Some(0);
                }
                if common.json {
                    print_json(&event);
                } else {
                    outln!("{}", describe_event(&event));
                }
                seen += 1;
                count.is_none_or(|limit| seen < limit)
            });
            // A reader that goes away (`| head -1`) ends the verb at once,
            // not at the next event, which may never come.
            tokio::select! {
                followed = follow => followed?,
                () = stdout_closed() => {}
            }
        }
        Verb::Metrics { common } => {
            out!(
                "{}",
                connect(&common)?.get_text(routes::METRICS.path).await?
            );
        }
        Verb::Kv { action } => kv(action).await?,
        Verb::Queues { common } => {
            let queues = connect(&common)?.call(&routes::QUEUES, &[], &()).await?;
            if common.json {
                print_json(&queues);
            } else {
                print_queues(&queues);
            }
        }
        Verb::Queue {
            action,
            name,
            limits,
            common,
        } => {
            let LimitFlags {
                concurrency,
                max_waiting,
                per_key,
                rate,
                burst,
                key_rate,
                key_burst,
            } = *limits;
            let change = crate::config::LimitsChange {
                concurrency,
                max_waiting,
                per_key,
                rate,
                burst,
                key_rate,
                key_burst,
            };
            let client = connect(&common)?;
            let queue = if action == "set" {
                client
                    .call(&routes::QUEUE_LIMITS, &[&name], &change)
                    .await?
            } else {
                if !change.is_empty() {
                    return Err(ClientError::refused(format!(
                        "limits are changed with `taskhost queue set {name} --...`, not `{action}`"
                    )));
                }
                client
                    .call(&routes::STEER_QUEUE, &[&name, &action], &())
                    .await?
            };
            if common.json {
                print_json(&queue);
            } else {
                print_queues(std::slice::from_ref(&queue));
            }
        }
        Verb::Dead {
            queue,
            after,
            limit,
            action,
            common,
        } => match action {
            Some(DeadAction::Retry { id, common }) => {
                let submitted = connect(&common)?
                    .call(&routes::RETRY_DEAD, &[&id.to_string()], &())
                    .await?;
                if common.json {
                    print_json(&submitted);
                } else {
                    for task in &submitted.tasks {
                        outln!(
                            "dead letter {id} submitted again: task {} on worker {}",
                            task.id,
                            task.worker
                        );
                    }
                }
            }
            Some(DeadAction::Discard { id, common }) => {
                let letter = connect(&common)?
                    .call(&routes::DISCARD_DEAD, &[&id.to_string()], &())
                    .await?;
                if common.json {
                    print_json(&letter);
                } else {
                    outln!(
                        "dead letter {id} ({}/{} in queue {}) dropped",
                        clean(&letter.letter.plugin),
                        clean(&letter.letter.factory),
                        clean(&letter.queue)
                    );
                }
            }
            None => {
                let query = crate::operations::DeadQuery {
                    queue,
                    after,
                    limit,
                };
                let page = connect(&common)?.call(&routes::DEAD, &[], &query).await?;
                if common.json {
                    print_json(&page);
                } else {
                    print_dead(&page);
                }
            }
        },
        Verb::Schedules { common } => {
            let schedules = connect(&common)?.call(&routes::SCHEDULES, &[], &()).await?;
            if common.json {
                print_json(&schedules);
            } else {
                print_schedules(&schedules);
            }
        }
        Verb::Schedule {
            action,
            name,
            common,
        } => {
            let client = connect(&common)?;
            let answer = client
                .call(&routes::STEER_SCHEDULE, &[&name, &action], &())
                .await?;
            let unreadable = |e: serde_json::Error| {
                ClientError::refused(format!("the host sent an unreadable answer: {e}"))
            };
            if action == "trigger" {
                let triggered: Triggered = serde_json::from_value(answer).map_err(unreadable)?;
                if common.json {
                    print_json(&triggered);
                } else {
                    outln!(
                        "schedule {} started {}",
                        clean(&triggered.schedule),
                        clean(&triggered.tasks.join(", "))
                    );
                }
            } else {
                let schedule: ScheduleView = serde_json::from_value(answer).map_err(unreadable)?;
                if common.json {
                    print_json(&schedule);
                } else {
                    print_schedules(std::slice::from_ref(&schedule));
                }
            }
        }
        Verb::Plugins { cluster, common } => {
            let client = connect(&common)?;
            let builds: Vec<PluginView> = if cluster {
                from_hosts(client.call(&routes::CLUSTER_PLUGINS, &[], &()).await?)?
            } else {
                client.call(&routes::PLUGINS, &[], &()).await?
            };
            if common.json {
                print_json(&builds);
            } else {
                print_plugins(&builds);
            }
        }
        Verb::Load {
            plugin,
            path,
            restart_tasks,
            cluster,
            common,
        } => {
            let path = std::path::absolute(&path).unwrap_or(path);
            let request = LoadRequest {
                path,
                restart_tasks,
                cluster,
            };
            let loaded = connect(&common)?
                .call(&routes::LOAD_PLUGIN, &[&plugin], &request)
                .await?;
            if common.json {
                print_json(&loaded);
            } else {
                outln!(
                    "loaded {} {} from {}",
                    clean(&loaded.name),
                    clean(&loaded.version),
                    clean(&loaded.path.display().to_string())
                );
                if restart_tasks {
                    outln!("restarted {} startup task(s)", loaded.restarted);
                }
                for host in &loaded.rollout {
                    match (&host.build, &host.error) {
                        (Some(build), None) if restart_tasks => outln!(
                            "host {}: serves {}, restarted {} startup task(s)",
                            clean(&host.host),
                            clean(build),
                            host.restarted
                        ),
                        (Some(build), None) => {
                            outln!("host {}: serves {}", clean(&host.host), clean(build))
                        }
                        (build, error) => outln!(
                            "host {}: refused ({}); serves {}",
                            clean(&host.host),
                            clean(error.as_deref().unwrap_or("no reason given")),
                            clean(build.as_deref().unwrap_or("no build"))
                        ),
                    }
                }
            }
            let refused: Vec<&str> = loaded
                .rollout
                .iter()
                .filter(|h| h.error.is_some())
                .map(|h| h.host.as_str())
                .collect();
            if !refused.is_empty() {
                return Err(ClientError::refused(format!(
                    "plugin {} {} was not loaded on host(s) {}",
                    clean(&loaded.name),
                    clean(&loaded.version),
                    clean(&refused.join(", "))
                )));
            }
        }
    }
    Ok(())
}

/// What `taskhost kv` does.
#[derive(Subcommand)]
pub(crate) enum KvAction {
    /// List the buckets with their key and byte counts, or with BUCKET its
    /// keys, in byte order.
    List {
        bucket: Option<String>,
        /// Show at most N keys.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Print the value of KEY in BUCKET as stored (exit 3 if it has none).
    Get {
        bucket: String,
        key: String,
        #[command(flatten)]
        common: Common,
    },
    /// Set KEY in BUCKET to VALUE, stored as given: write JSON ('42',
    /// '"text"', '{"a":1}') for values tasks read with `get`.
    Set {
        bucket: String,
        key: String,
        value: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete KEY from BUCKET (exit 3 if it had none).
    Delete {
        bucket: String,
        key: String,
        #[command(flatten)]
        common: Common,
    },
}

async fn kv(action: KvAction) -> Result<(), ClientError> {
    match action {
        KvAction::List {
            bucket: None,
            common,
            ..
        } => {
            let buckets = connect(&common)?
                .call(&routes::KV_BUCKETS, &[], &())
                .await?;
            if common.json {
                print_json(&buckets);
            } else {
                let rows = buckets
                    .iter()
                    .map(|b| vec![clean(&b.bucket), b.keys.to_string(), b.bytes.to_string()])
                    .collect();
                print_table(&["BUCKET", "KEYS", "BYTES"], rows);
            }
        }
        KvAction::List {
            bucket: Some(bucket),
            limit,
            common,
        } => {
            let client = connect(&common)?;
            let mut keys = Vec::new();
            let mut after = None;
            let wanted = limit.unwrap_or(usize::MAX);
            while keys.len() < wanted {
                let query = KeysQuery {
                    after: after.take(),
                    limit: Some((wanted - keys.len()).min(10_000)),
                };
                let page = client.call(&routes::KV_KEYS, &[&bucket], &query).await?;
                keys.extend(page.keys);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            keys.truncate(wanted);
            if common.json {
                print_json(&keys);
            } else {
                for key in &keys {
                    outln!("{}", clean(key));
                }
            }
        }
        KvAction::Get {
            bucket,
            key,
            common,
        } => {
            let entry = connect(&common)?
                .call(&routes::KV_GET, &[&bucket, &key], &())
                .await?;
            if common.json {
                print_json(&entry);
            } else if let Some(text) = &entry.text {
                // A value is what a guest wrote: on a terminal, its control
                // characters are shown escaped, not obeyed.
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    outln!("{}", clean(text));
                } else {
                    outln!("{text}");
                }
            } else if let Some(encoded) = &entry.base64 {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| ClientError::refused(format!("the host sent bad base64: {e}")))?;
                use std::io::Write;
                let _ = std::io::stdout().write_all(&bytes);
            }
        }
        KvAction::Set {
            bucket,
            key,
            value,
            common,
        } => {
            let put = KvPut {
                text: Some(value),
                base64: None,
            };
            let written = connect(&common)?
                .call(&routes::KV_PUT, &[&bucket, &key], &put)
                .await?;
            if common.json {
                print_json(&written);
            } else {
                outln!(
                    "set {} {} ({} bytes)",
                    clean(&written.bucket),
                    clean(&written.key),
                    written.bytes
                );
            }
        }
        KvAction::Delete {
            bucket,
            key,
            common,
        } => {
            let written = connect(&common)?
                .call(&routes::KV_DELETE, &[&bucket, &key], &())
                .await?;
            if common.json {
                print_json(&written);
            }
            if !written.deleted {
                return Err(ClientError::not_found(format!(
                    "bucket {} has no key {:?}",
                    written.bucket, written.key
                )));
            }
            if !common.json {
                outln!("deleted {} {}", clean(&written.bucket), clean(&written.key));
            }
        }
    }
    Ok(())
}

/// Resolves once stdout is a pipe whose reader has gone; never otherwise.
///
/// # Cancel safety
///
/// Dropping it leaves its watching thread blocked until the process ends
/// (or the reader goes); a new call starts another.
///
/// A blocked `poll` with no events asked for wakes only on POLLERR or
/// POLLHUP, which a pipe reports when its last reader closes. It runs on a
/// thread of its own, not tokio's blocking pool, so that ending the
/// process never waits for it.
async fn stdout_closed() {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || {
            use rustix::event::{PollFd, PollFlags, poll};
            let stdout = std::io::stdout();
            let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
            loop {
                match poll(&mut fds, None) {
                    Ok(_) if !fds[0].revents().is_empty() => break,
                    Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return,
                }
            }
            let _ = closed.send(());
        });
    if spawned.is_err() || on_close.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Text from the host, safe for a table: control characters escaped, so a
/// name holding ESC, CR or LF cannot forge a row or take over the terminal.
fn clean(text: &str) -> String {
    crate::logging::escape_controls(text, false).into_owned()
}

/// `text` cut to `width` characters, the cut marked with `…`.
fn fit(text: String, width: usize) -> String {
    if text.chars().count() <= width {
        return text;
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// How wide a table column may grow before its cells are cut.
const MAX_COLUMN: usize = 40;

/// Rows of cells as aligned columns, each as wide as its widest cell (up
/// to [`MAX_COLUMN`]); the last column is never padded or cut.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .enumerate()
                .map(|(i, cell)| {
                    if i + 1 < columns {
                        fit(cell, MAX_COLUMN)
                    } else {
                        cell
                    }
                })
                .collect()
        })
        .collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            } else {
                text.push_str(cell);
            }
        }
        text.trim_end().to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    outln!("{}", line(&header));
    for row in &rows {
        outln!("{}", line(row));
    }
}

fn print_queues(queues: &[crate::operations::types::QueueView]) {
    let rows = queues
        .iter()
        .map(|q| {
            let limits = &q.limits;
            let mut bounds = Vec::new();
            if let Some(n) = limits.concurrency {
                bounds.push(format!("concurrency {n}"));
            }
            if let Some(n) = limits.per_key {
                bounds.push(format!("per_key {n}"));
            }
            if let Some(rate) = &limits.rate {
                bounds.push(format!("rate {}", clean(rate)));
            }
            if let Some(rate) = &limits.key_rate {
                bounds.push(format!("key_rate {}", clean(rate)));
            }
            let state = match (q.paused, q.draining) {
                (true, true) => "paused, draining",
                (true, false) => "paused",
                (false, true) => "draining",
                (false, false) => "open",
            };
            vec![
                clean(&q.name),
                state.into(),
                match (q.delayed, q.blocked) {
                    (0, 0) => q.waiting.to_string(),
                    (delayed, 0) => format!("{} ({delayed} delayed)", q.waiting),
                    (0, blocked) => format!("{} ({blocked} held by the cluster)", q.waiting),
                    (delayed, blocked) => format!(
                        "{} ({delayed} delayed, {blocked} held by the cluster)",
                        q.waiting
                    ),
                },
                q.running.to_string(),
                format!("{:.1}", q.started_per_second),
                q.oldest_wait_ms
                    .map(|ms| {
                        humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
                    })
                    .unwrap_or_else(|| "-".into()),
                q.dead.to_string(),
                match bounds.is_empty() {
                    true => "-".into(),
                    false => bounds.join(", "),
                },
                q.top_keys
                    .iter()
                    .map(|k| format!("{} {}/{}", clean(&k.key), k.waiting, k.running))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    print_table(
        &[
            "QUEUE",
            "STATE",
            "WAITING",
            "RUNNING",
            "STARTED/S",
            "OLDEST",
            "DEAD",
            "LIMITS",
            "TOP KEYS (WAITING/RUNNING)",
        ],
        rows,
    );
    for queue in queues.iter().filter(|q| !q.changed.is_empty()) {
        outln!(
            "queue {}: limits set at run time ({}); `taskhost queue reset {}` goes back to \
             app.toml's",
            clean(&queue.name),
            clean(&serde_json::to_string(&queue.changed).unwrap_or_default()),
            clean(&queue.name)
        );
    }
}

fn print_dead(page: &crate::operations::DeadLetters) {
    let rows = page
        .letters
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                clean(&l.queue),
                clean(&format!("{}/{}", l.letter.plugin, l.letter.factory)),
                clean(l.letter.name.as_deref().unwrap_or("-")),
                clean(l.letter.key.as_deref().unwrap_or("-")),
                clean(&l.letter.failed_at),
                l.letter.attempts.to_string(),
                clean(&l.letter.error),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "QUEUE",
            "PLUGIN/FACTORY",
            "NAME",
            "KEY",
            "FAILED AT",
            "ATTEMPTS",
            "ERROR",
        ],
        rows,
    );
    if let Some(after) = page.next_after {
        outln!("more: taskhost dead --after {after}");
    }
}

fn print_schedules(schedules: &[ScheduleView]) {
    let time = |ms: Option<u64>| {
        ms.map(|ms| {
            crate::config::tick_label(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        })
        .unwrap_or_else(|| "-".into())
    };
    let rows = schedules
        .iter()
        .map(|s| {
            vec![
                clean(&s.name),
                clean(&format!("{}/{}", s.plugin, s.factory)),
                clean(&s.when),
                if s.paused {
                    "paused".into()
                } else {
                    time(s.next_at_ms)
                },
                match (&s.last_task, s.last_state) {
                    (Some(task), Some(state)) => format!("{} {state}", clean(task)),
                    (Some(task), None) => format!("{} (purged)", clean(task)),
                    _ => "-".into(),
                },
                s.runs.to_string(),
                s.misses.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "PLUGIN/FACTORY",
            "WHEN",
            "NEXT",
            "LAST RUN",
            "RUNS",
            "MISSES",
        ],
        rows,
    );
}

/// The tasks `filter` selects: this host's, or every host's (`--cluster`),
/// each then with its host.
async fn list_tasks(
    client: &Client,
    cluster: bool,
    filter: &TaskFilter,
) -> Result<Vec<TaskView>, ClientError> {
    if cluster {
        from_hosts(client.call(&routes::CLUSTER_TASKS, &[], filter).await?)
    } else {
        client.call(&routes::LIST_TASKS, &[], filter).await
    }
}

/// A listing gathered from a cluster's hosts, entry by entry.
/// The id of the task named `name` (on `worker`, if given): one task, or
/// an error that says what to pass.
/// A task given as its id (digits only) or its name: its id.
async fn task_id(
    client: &Client,
    task: &str,
    worker: Option<WorkerId>,
) -> Result<u64, ClientError> {
    match task.parse::<u64>() {
        Ok(id) => Ok(id),
        Err(_) => task_id_by_name(client, task, worker).await,
    }
}

async fn task_id_by_name(
    client: &Client,
    name: &str,
    worker: Option<WorkerId>,
) -> Result<u64, ClientError> {
    let filter = TaskFilter {
        worker: worker.map(|w| w.to_string()),
        name: Some(name.to_string()),
        ..TaskFilter::default()
    };
    let tasks = list_tasks(client, false, &filter).await?;
    match tasks.as_slice() {
        [] => Err(ClientError::not_found(format!("no task named `{name}`"))),
        [task] => Ok(task.id),
        several => {
            let workers: Vec<String> = several.iter().map(|t| t.worker.to_string()).collect();
            Err(ClientError::refused(format!(
                "tasks of workers {} are named `{name}`: pass --worker, or the task's id",
                workers.join(", ")
            )))
        }
    }
}

/// Prints task `id`'s kept log lines; with `follow`, new ones as they come
/// until it has ended.
async fn print_logs(client: &Client, id: u64, follow: bool, json: bool) -> Result<(), ClientError> {
    let id_text = id.to_string();
    let mut after = 0;
    let mut first = true;
    loop {
        let query = LogsQuery {
            after: Some(after),
            limit: None,
            wait_ms: follow.then_some(10_000),
        };
        let page = client.call(&routes::TASK_LOGS, &[&id_text], &query).await?;
        if first && page.dropped > 0 && !json {
            eprintln!(
                "({} older line(s) of task {id} are no longer kept: [limits] task_log_lines, \
                 task_log_bytes)",
                page.dropped
            );
        }
        first = false;
        for line in &page.lines {
            if json {
                print_json(line);
            } else {
                let at = chrono::DateTime::from_timestamp_millis(line.at_ms as i64)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                outln!(
                    "{at} {:>5} {}",
                    line.level.to_uppercase(),
                    clean(&line.message)
                );
            }
        }
        after = page.lines.last().map_or(after, |line| line.seq);
        // More than one page kept: read on at once.
        if page.last > after && !page.lines.is_empty() {
            continue;
        }
        if !follow || page.ended {
            return Ok(());
        }
    }
}

fn from_hosts<T: serde::de::DeserializeOwned>(
    entries: Vec<serde_json::Value>,
) -> Result<Vec<T>, ClientError> {
    entries
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::refused(format!("a host sent an unreadable answer: {e}")))
}

/// `--state` as the state it names; the error lists the states.
fn parse_state(state: Option<String>) -> Result<Option<TaskState>, ClientError> {
    state
        .map(|text| {
            serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| {
                ClientError::Failed(crate::operations::OpError::bad_request(format!(
                    "unknown state `{text}`: pending, running, done, failed, cancelled"
                )))
            })
        })
        .transpose()
}

fn print_tasks(tasks: &[TaskView]) {
    // A listing gathered from a cluster says each task's host.
    let hosts = tasks.iter().any(|task| task.host.is_some());
    // So does one where a supervised task was restarted: how often.
    let restarts = tasks.iter().any(|task| task.restarts > 0);
    let rows = tasks
        .iter()
        .map(|task| {
            let outcome = match task.state {
                TaskState::Done => task.result.as_deref().map(clean).unwrap_or_default(),
                TaskState::Failed => clean(headline(task.error.as_deref().unwrap_or(""))),
                TaskState::Cancelled => task
                    .cancel_stage
                    .map(|stage| stage.as_str().to_string())
                    .unwrap_or_default(),
                TaskState::Queued => task
                    .queue
                    .as_deref()
                    .map(|queue| format!("in queue {}", clean(queue)))
                    .unwrap_or_default(),
                TaskState::Pending | TaskState::Running => String::new(),
            };
            let mut row = Vec::with_capacity(8);
            if hosts {
                row.push(clean(task.host.as_deref().unwrap_or("-")));
            }
            row.extend([
                task.id.to_string(),
                task.worker.to_string(),
                task.name
                    .as_deref()
                    .map(clean)
                    .unwrap_or_else(|| "-".into()),
                clean(&format!("{}/{}", task.plugin, task.factory)),
                task.state.to_string(),
            ]);
            if restarts {
                row.push(task.restarts.to_string());
            }
            row.push(outcome);
            row
        })
        .collect();
    let mut columns = vec!["HOST", "ID", "WORKER", "NAME", "PLUGIN/FACTORY", "STATE"];
    if !hosts {
        columns.remove(0);
    }
    if restarts {
        columns.push("RESTARTS");
    }
    columns.push("OUTCOME");
    print_table(&columns, rows);
}

/// The line of an error that says what went wrong: its first, but for a
/// Python traceback (which starts `Traceback (most recent call last):`
/// and ends with the exception) its last unindented line.
fn headline(error: &str) -> &str {
    let first = error.lines().next().unwrap_or("");
    if first.starts_with("Traceback (most recent call last)") {
        return error
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty() && !line.starts_with(char::is_whitespace))
            .filter(|line| !line.starts_with("Traceback"))
            .unwrap_or(first);
    }
    first
}

/// "3 task(s): 1 running, 2 done", and how many of them the table showed.
fn summary(tasks: &[TaskView], shown: usize) -> String {
    let mut counts: Vec<(TaskState, usize)> = Vec::new();
    for task in tasks {
        match counts.iter_mut().find(|(state, _)| *state == task.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((task.state, 1)),
        }
    }
    counts.sort_by_key(|(state, _)| STATES.iter().position(|s| *s == state.as_str()));
    let by_state: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let mut line = format!("{} task(s)", tasks.len());
    if !by_state.is_empty() {
        line += &format!(": {}", by_state.join(", "));
    }
    if shown < tasks.len() {
        line += &format!(" (the {shown} newest shown)");
    }
    line
}

fn print_plugins(builds: &[PluginView]) {
    let hosts = builds.iter().any(|build| build.host.is_some());
    let rows = builds
        .iter()
        .map(|build| {
            let mut row = Vec::with_capacity(7);
            if hosts {
                row.push(clean(build.host.as_deref().unwrap_or("-")));
            }
            row.extend([
                clean(&build.name),
                clean(&build.version),
                match build.state {
                    BuildState::Serving => "serving".to_string(),
                    BuildState::Draining => "draining".to_string(),
                },
                build.live_tasks.to_string(),
                build.factories.len().to_string(),
                clean(&build.path.display().to_string()),
            ]);
            row
        })
        .collect();
    let columns = [
        "HOST",
        "PLUGIN",
        "VERSION",
        "STATE",
        "TASKS",
        "FACTORIES",
        "PATH",
    ];
    print_table(if hosts { &columns } else { &columns[1..] }, rows);
}

fn describe_event(event: &LifecycleEvent) -> String {
    let task = |task: &TaskRef, step: &str, detail: String| {
        format!(
            "[{}/{}] {step} {}/{}{detail}",
            task.worker,
            clean(&task.task),
            clean(&task.plugin),
            clean(&task.factory)
        )
    };
    match event {
        LifecycleEvent::Subscribed => "following the host's lifecycle stream".to_string(),
        LifecycleEvent::Queued { task: t, queue, .. } => {
            task(t, "queued", format!(" in queue {}", clean(queue)))
        }
        LifecycleEvent::Started { task: t, version } => {
            task(t, "started", format!(" ({})", clean(version)))
        }
        LifecycleEvent::Done {
            task: t, result, ..
        } => task(t, "done", format!(": {}", clean(result))),
        LifecycleEvent::Failed { task: t, error, .. } => {
            task(t, "failed", format!(": {}", clean(error)))
        }
        LifecycleEvent::Cancelled { task: t, stage, .. } => {
            task(t, "cancelled", format!(" ({})", stage.as_str()))
        }
        LifecycleEvent::Retrying {
            task: t,
            attempt,
            delay_ms,
            error,
        } => task(
            t,
            "retrying",
            format!(": {}; attempt {attempt} in {delay_ms} ms", clean(error)),
        ),
        LifecycleEvent::Restarting {
            task: t,
            restart,
            delay_ms,
            error,
        } => task(
            t,
            "restarting",
            format!(
                ": {}; restart {restart} in {delay_ms} ms",
                match error {
                    Some(error) => format!("failed: {}", clean(error)),
                    None => "ended done".to_string(),
                }
            ),
        ),
        LifecycleEvent::Reloaded {
            task: t,
            from,
            version,
        } => task(
            t,
            "reloaded",
            format!(": {} -> {}", clean(from), clean(version)),
        ),
        LifecycleEvent::PluginLoaded {
            plugin, version, ..
        } => format!("plugin {} loaded: {}", clean(plugin), clean(version)),
        LifecycleEvent::PluginRefused { plugin, error, .. } => {
            format!("plugin {} refused: {}", clean(plugin), clean(error))
        }
        LifecycleEvent::PluginDropped { plugin, version } => format!(
            "plugin {} {} dropped: its last task ended",
            clean(plugin),
            clean(version)
        ),
        LifecycleEvent::ScheduleFired {
            schedule,
            tick,
            trigger,
            tasks,
        } => format!(
            "schedule {} fired ({}) for {tick}: {}",
            clean(schedule),
            trigger.as_str(),
            clean(&tasks.join(", "))
        ),
        LifecycleEvent::ScheduleMissed {
            schedule,
            tick,
            missed,
            reason,
        } => format!(
            "schedule {} missed {missed} tick(s), the last at {tick}: {}",
            clean(schedule),
            clean(reason)
        ),
        LifecycleEvent::Lagged { missed } => {
            format!("(this follower fell behind: {missed} event(s) missed)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::headline;

    /// Issue 24, item 11: the OUTCOME column showed a Python failure as
    /// `Traceback (most recent call last):`.
    #[test]
    fn a_python_traceback_is_shown_by_its_exception_line() {
        let traceback = "Traceback (most recent call last):\n  File \"app.py\", line 22, in run\n    \
                         raise ValueError(\"bad input\")\nValueError: bad input\n";
        assert_eq!(headline(traceback), "ValueError: bad input");
        assert_eq!(headline("no such key\nmore"), "no such key");
        assert_eq!(headline(""), "");
    }
}
