//! The `taskhost` command line: parses arguments and calls the library.
//! Exit codes are one enum, `Exit`; `--help` lists them.

/// `println!` for the verbs' output, except that a reader that has gone
/// (`taskhost check app.toml | head -3`) ends the process quietly with
/// status 0, as it ends a Unix tool, where `println!` would panic on the
/// broken pipe. `run` never prints this way: its log writer ignores a
/// closed stdout, so the host still ends its tasks.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with [`outln!`]'s handling of a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

mod remote;

use crate::application::{Application, Reserved, RunOptions};
use crate::config::{AppConfig, Scope};
use crate::control::{self, ControlOptions};
use crate::dirs;
use crate::engine::{EngineSettings, WorstCase};
use crate::host::RunSummary;
use crate::logging::{self, LogFormat};
use crate::plugin::build::{self, BuildOptions, BuildOutput, Toolchain};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "taskhost",
    version,
    about = "Runs WebAssembly components as background tasks, Sanic-style",
    long_about = "Runs WebAssembly components as background tasks, Sanic-style.\n\n\
        Plugins are components built against the taskhost:plugin WIT world; each \
        task runs in its own sandboxed instance, and cancellation always works, \
        even for a task stuck in a loop.\n\n\
        A day with taskhost:\n  \
        taskhost build plugins/examples        # plugin crate -> component\n  \
        taskhost check examples/app.toml       # validate config and plugins\n  \
        taskhost run examples/app.toml         # run until Ctrl-C\n  \
        taskhost run --until-idle app.toml     # batch mode: exit when no task is left",
    after_help = "Exit codes: 0 ok; 1 a task failed (with --until-idle), the host failed, or \
        it refused a request; 2 bad usage, config or plugin (nothing started); 3 not found; \
        4 no running host reachable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an application: main tasks first, then every worker's tasks.
    ///
    /// Runs until SIGINT/SIGTERM, then cancels every task (cooperatively,
    /// then by force after the grace period), waits for them, and exits 0.
    /// With --until-idle it exits as soon as no task is left: 0 if none
    /// failed, 1 otherwise.
    Run {
        /// The application's app.toml.
        app: PathBuf,
        /// Exit when no task is left instead of waiting for a signal.
        #[arg(long)]
        until_idle: bool,
        /// Watch plugin files and `build = ...` plugin sources: rebuild and
        /// hot-load a plugin when it changes.
        #[arg(long)]
        watch: bool,
        /// Where the public listener binds (HOST:PORT, port 0 picks a free
        /// one), instead of app.toml's `[listen] address`. It serves the
        /// `[[routes]]` (websockets and webhooks that start tasks); an app
        /// without routes has no listener.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run an application while you work on it: `run --watch`, and a
    /// rebuilt plugin's running tasks restart on the new build.
    ///
    /// Every plugin is watched (its component, or its `build = ...`
    /// sources): a change rebuilds and hot-loads it, and its running tasks
    /// are cancelled and started again on the new build, as with
    /// `on_load = "restart"` on every plugin (a `[[tasks]]` entry's own
    /// `on_load` still wins). Stops on SIGINT/SIGTERM like `run`.
    Dev {
        /// The application's app.toml.
        app: PathBuf,
        /// Where the public listener binds (HOST:PORT), as `run --listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        control: ControlArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Make a new project: a plugin with one task, and an app.toml that
    /// runs it.
    ///
    /// `taskhost new rust hello` writes hello/ with the plugin (a Rust
    /// crate, a Python project or a JavaScript package) and hello/app.toml;
    /// then, in hello/, `taskhost check app.toml` builds and checks it,
    /// `taskhost run --until-idle app.toml` runs its task once, and
    /// `taskhost dev app.toml` runs it, rebuilding and restarting on every
    /// change. A Rust project depends on the SDK this taskhost carries,
    /// written into its cache.
    New {
        /// The plugin's language.
        #[arg(value_enum)]
        language: crate::scaffold::Language,
        /// The project's name: its directory, its plugin and its package.
        name: String,
        /// Where to make the project directory [default: the current one].
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Validate app.toml and its plugins without running any task.
    ///
    /// Builds `build = ...` plugins, loads every plugin, and checks that each
    /// task's factory exists and accepts its arguments.
    Check {
        /// The application's app.toml.
        app: PathBuf,
        /// List each schedule's next fire times from this time (RFC 3339,
        /// e.g. 2026-03-27T00:00:00Z) instead of from now.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        from: Option<std::time::SystemTime>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Build a plugin (Rust, Python or JavaScript) into a component and print
    /// the component's path.
    ///
    /// A Rust crate (Cargo.toml) builds with rustup's wasm32-wasip2 target
    /// when installed, otherwise Debian's Rust (rustc-web, cargo-web,
    /// rust-web-src, lld, wasi-libc) plus the WASI preview1 adapter; all
    /// plugins share one cargo target directory, so dependencies and the
    /// wasm std are compiled once. A Python project (pyproject.toml with
    /// [tool.taskhost] module = "app") builds with componentize-py, a
    /// JavaScript package (package.json with "taskhost": {"main": "app.js"})
    /// with esbuild and componentize-js: taskhost installs them into its
    /// cache the first time (python3 with venv, or node and npm, must be on
    /// the PATH; TASKHOST_PYTHON, TASKHOST_NODE and TASKHOST_NPM pick
    /// others).
    Build {
        /// The plugin's directory (holding its Cargo.toml, pyproject.toml or
        /// package.json).
        path: PathBuf,
        /// Where to write the component [default: PATH/<package name>.wasm].
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        build: BuildArgs,
    },
    #[command(flatten)]
    Remote(remote::Verb),
}

#[derive(Args)]
struct ControlArgs {
    /// Where the control API listens: HOST:PORT (port 0 picks a free one),
    /// or unix:PATH for a Unix socket.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    control: control::ControlAddress,
    /// Do not serve the control API.
    #[arg(long)]
    no_control: bool,
    /// Allow --control on an address other than loopback (the token still
    /// guards every request, but the traffic is not encrypted).
    #[arg(long)]
    control_public: bool,
    #[command(flatten)]
    file: ControlFileArg,
}

#[derive(Args)]
pub(crate) struct ControlFileArg {
    /// The state file holding the control API's address and token
    /// [default: $TASKHOST_CONTROL_FILE or ~/.cache/taskhost/control.json].
    #[arg(long, value_name = "PATH")]
    control_file: Option<PathBuf>,
}

impl ControlFileArg {
    pub(crate) fn path(&self) -> Result<PathBuf> {
        match &self.control_file {
            Some(path) => Ok(path.clone()),
            None => control::default_state_file(),
        }
    }
}

impl ControlArgs {
    fn options(&self) -> Result<Option<ControlOptions>> {
        if self.no_control {
            return Ok(None);
        }
        Ok(Some(ControlOptions {
            bind: self.control.clone(),
            allow_public: self.control_public,
            state_file: self.file.path()?,
        }))
    }
}

/// What `run` and `check` share: both load the app the same way.
#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    logs: LogArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args)]
struct LogArgs {
    /// Log line format: human-readable, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Which lines to show, in RUST_LOG syntax (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Args)]
struct EngineArgs {
    /// Directory of the compile cache: unchanged components load without
    /// compiling [default: $TASKHOST_COMPILE_CACHE or ~/.cache/taskhost/compiled].
    #[arg(long, value_name = "DIR")]
    compile_cache: Option<PathBuf>,
    /// Compile every component at load, ignoring the cache.
    #[arg(long, conflicts_with = "compile_cache")]
    no_compile_cache: bool,
    /// Most MiB the compile cache's entries may hold: past it, the least
    /// recently loaded go (a compiled Python or JavaScript plugin takes
    /// 30-60 MiB, a Rust one about 1).
    #[arg(
        long,
        value_name = "MIB",
        env = "TASKHOST_COMPILE_CACHE_MAX_MB",
        default_value_t = default_cache_mb(),
        value_parser = clap::value_parser!(u64).range(1..=(1 << 30))
    )]
    compile_cache_max_mb: u64,
}

/// [`crate::compile_cache::DEFAULT_MAX_BYTES`] in MiB.
const fn default_cache_mb() -> u64 {
    crate::compile_cache::DEFAULT_MAX_BYTES >> 20
}

impl EngineArgs {
    fn settings(&self) -> Result<EngineSettings> {
        let compile_cache = if self.no_compile_cache {
            None
        } else {
            match &self.compile_cache {
                Some(dir) => Some(dir.clone()),
                None => Some(dirs::compile_cache_dir()?),
            }
        };
        Ok(EngineSettings {
            compile_cache,
            compile_cache_max_bytes: self.compile_cache_max_mb << 20,
            ..EngineSettings::default()
        })
    }
}

#[derive(Args)]
struct BuildArgs {
    /// Force the toolchain that builds plugins [default: detect; env TASKHOST_TOOLCHAIN].
    #[arg(long, value_enum)]
    toolchain: Option<Toolchain>,
    /// Cargo target directory shared by all plugin builds
    /// [default: $TASKHOST_TARGET_DIR or ~/.cache/taskhost/wasm-target].
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// When a Python or JavaScript build fails, show componentize-py's or
    /// componentize-js's whole output (tool frames, node stacks) instead
    /// of only the error in your code (file, line, message).
    #[arg(long)]
    verbose: bool,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            toolchain: self.toolchain,
            target_dir: self.target_dir.clone(),
            out: None,
            output: BuildOutput::Inherit,
            verbose: self.verbose,
        }
    }
}

/// How `taskhost` exits: the one list of its exit codes (`--help` and the
/// README say the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// Success; also a verb whose reader closed its output early.
    Ok = 0,
    /// A task failed (`run --until-idle`), the host failed while running,
    /// or a running host refused a request.
    Failed = 1,
    /// Bad usage, bad config, or a plugin that cannot be built or loaded:
    /// nothing was started. (clap exits 2 for bad usage too.)
    Refused = 2,
    /// A task, plugin or worker a verb named does not exist.
    NotFound = 3,
    /// No running host could be reached.
    Unreachable = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// An error that means "nothing was started" ([`Exit::Refused`]) rather
/// than "the run went wrong" ([`Exit::Failed`]).
struct Refused(anyhow::Error);

/// The `taskhost` binary: parses the arguments, runs the verb on a
/// one-thread runtime, and exits 0 (ok), 1 (failed), 2 (refused: nothing
/// started), 3 (not found) or 4 (no host reached).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return Exit::Failed.into();
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code.into(),
        Err(Refused(error)) => {
            eprintln!("error: {error:#}");
            Exit::Refused.into()
        }
    }
}

async fn dispatch(command: Command) -> Result<Exit, Refused> {
    match command {
        Command::Run {
            app,
            until_idle,
            watch,
            listen,
            control,
            load: load_args,
        } => {
            let options = RunOptions {
                until_idle,
                control: control.options()?,
                watch,
                listen,
            };
            run_app(&app, options, &load_args, false).await
        }
        Command::Dev {
            app,
            listen,
            control,
            load: load_args,
        } => {
            let options = RunOptions {
                until_idle: false,
                control: control.options()?,
                watch: true,
                listen,
            };
            run_app(&app, options, &load_args, true).await
        }
        Command::New {
            language,
            name,
            dir,
        } => {
            let made = crate::scaffold::new_project(language, &name, &dir).map_err(Refused)?;
            outln!("{}", made.display());
            eprintln!(
                "next: cd {} && taskhost dev app.toml   (or: taskhost check app.toml; \
                 taskhost run --until-idle app.toml)",
                made.display()
            );
            Ok(Exit::Ok)
        }
        Command::Check {
            app,
            from,
            load: load_args,
        } => {
            init_logs(&load_args.logs)?;
            let application = load(&app, &load_args).await?;
            print_check(
                &application,
                from.unwrap_or_else(std::time::SystemTime::now),
            );
            Ok(Exit::Ok)
        }
        Command::Build { path, out, build } => {
            let options = BuildOptions {
                out,
                ..build.options()
            };
            let component = tokio::task::spawn_blocking(move || build::build(&path, &options))
                .await
                .map_err(|e| Refused(e.into()))?
                .map_err(Refused)?;
            outln!("{}", component.display());
            Ok(Exit::Ok)
        }
        Command::Remote(verb) => Ok(remote::run(verb).await),
    }
}

/// `run` and `dev`: loads the app, takes its ports and storage, loads its
/// plugins and runs it. `dev` makes every plugin's newer build restart its
/// running tasks (`on_load = "restart"`).
async fn run_app(
    app: &std::path::Path,
    options: RunOptions,
    load_args: &LoadArgs,
    dev: bool,
) -> Result<Exit, Refused> {
    init_logs(&load_args.logs)?;
    // Before anything is built or run: a port or storage directory in use
    // is a refusal (exit 2) with nothing started.
    let mut config = AppConfig::load(app).map_err(Refused)?;
    if options.listen.is_some() && config.routes.is_empty() {
        return Err(Refused(anyhow::anyhow!(
            "--listen: {} has no [[routes]], so there is nothing to listen for",
            app.display()
        )));
    }
    if dev {
        for plugin in config.plugins.values_mut() {
            plugin.on_load = crate::config::OnLoad::Restart;
        }
    }
    let until_idle = options.until_idle;
    let reserved = Reserved::take(&config, &options).await.map_err(Refused)?;
    let application = load_config(config, load_args).await?;
    let shutdown = shutdown_signal();
    match application.run(reserved, options, shutdown).await {
        Ok(summary) => Ok(exit_code(&summary, until_idle)),
        Err(error) => {
            tracing::error!("{error:#}");
            Ok(Exit::Failed)
        }
    }
}

fn init_logs(logs: &LogArgs) -> Result<(), Refused> {
    logging::init(logs.log_format, &logs.log_level).map_err(Refused)
}

async fn load(app: &std::path::Path, args: &LoadArgs) -> Result<Application, Refused> {
    let config = AppConfig::load(app).map_err(Refused)?;
    load_config(config, args).await
}

async fn load_config(config: AppConfig, args: &LoadArgs) -> Result<Application, Refused> {
    Application::load(config, &args.engine.settings()?, &args.build.options())
        .await
        .map_err(Refused)
}

fn exit_code(summary: &RunSummary, until_idle: bool) -> Exit {
    tracing::info!(
        done = summary.done,
        failed = summary.failed,
        cancelled = summary.cancelled,
        "taskhost stopped: {} done, {} failed, {} cancelled",
        summary.done,
        summary.failed,
        summary.cancelled
    );
    let failed = summary.abandoned > 0 || (until_idle && summary.failed > 0);
    if failed { Exit::Failed } else { Exit::Ok }
}

/// A time as RFC 3339 (`2026-03-27T00:00:00Z`).
fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc).into())
        .map_err(|e| format!("not an RFC 3339 time such as 2026-03-27T00:00:00Z: {e}"))
}

/// How many fire times `taskhost check` shows per schedule.
const CHECK_FIRE_TIMES: usize = 5;

fn print_check(application: &Application, from: std::time::SystemTime) {
    let config = application.config();
    outln!("{}: ok", config.source.display());
    outln!("  app {:?}, {} worker(s)", config.name, config.workers);
    for plugin in application.plugins() {
        outln!(
            "  plugin {} ({}, {}): {} factories",
            plugin.name,
            plugin.path.display(),
            plugin.version,
            plugin.factories.len()
        );
        if let Some(variables) = config
            .plugins
            .get(&*plugin.name)
            .map(|p| p.variables.described())
            .filter(|names| !names.is_empty())
        {
            // Names only, as for [config]: values may be secrets.
            outln!(
                "    variables: {}",
                crate::logging::escape_controls(&variables.join(", "), false)
            );
        }
        for factory in &plugin.factories {
            outln!(
                "    {:<40} {}",
                crate::logging::escape_controls(&factory.name, false),
                crate::logging::escape_controls(&factory.description, false)
            );
        }
    }
    let main = config
        .tasks
        .iter()
        .filter(|t| t.scope == Scope::Main)
        .count();
    let worker = config.tasks.len() - main;
    outln!("  tasks: {main} main, {worker} per worker");
    for queue in &config.queues {
        let mut limits = vec![format!("max_waiting {}", queue.max_waiting)];
        if let Some(n) = queue.concurrency {
            limits.push(format!("concurrency {n}"));
        }
        if let Some(n) = queue.per_key {
            limits.push(format!("per_key {n}"));
        }
        if let Some(path) = &queue.key_arg {
            limits.push(format!("key from argument {}", path.join(".")));
        }
        if let Some(rate) = queue.rate {
            limits.push(format!("rate {rate} (burst {})", rate.burst));
        }
        if let Some(rate) = queue.key_rate {
            limits.push(format!("key_rate {rate} (burst {})", rate.burst));
        }
        match queue.ageing {
            Some(every) => limits.push(format!("ageing {}", humantime::format_duration(every))),
            None => limits.push("strict priorities".into()),
        }
        if queue.dedupe {
            limits.push("dedupe".into());
        }
        outln!(
            "  queue {}: {}",
            crate::logging::escape_controls(&queue.name, false),
            limits.join(", ")
        );
    }
    for schedule in &config.schedules {
        let next: Vec<String> = schedule
            .when
            .upcoming(from, CHECK_FIRE_TIMES)
            .into_iter()
            .map(crate::config::tick_label)
            .collect();
        outln!(
            "  schedule {} ({}/{}, {}{}): next {}",
            schedule.name,
            schedule.plugin,
            schedule.factory,
            schedule.when,
            match &schedule.queue {
                Some(placement) => format!(", queue {}", placement.queue),
                None => String::new(),
            },
            if next.is_empty() {
                "never".to_string()
            } else {
                next.join(", ")
            }
        );
    }
    if let Some(listen) = &config.listen {
        outln!(
            "  listen {} (up to {} websocket connections, {} connections in all; {:?} to send a \
             request's head)",
            listen.address,
            listen.max_connections,
            u64::from(listen.max_connections) + u64::from(listen.max_requests),
            listen.header_timeout
        );
    }
    for route in &config.routes {
        let extra = match &route.kind {
            crate::config::RouteKind::WebSocket(ws) => {
                format!("up to {} connections", ws.max_connections)
            }
            crate::config::RouteKind::Http(http) => format!(
                "respond {}{}{}{}",
                match http.respond {
                    crate::config::Respond::Accepted => "accepted",
                    crate::config::Respond::Result => "result",
                },
                match &http.secret {
                    Some(secret) => match &secret.secret {
                        Some(source) => format!(", signed (secret from {source})"),
                        None => ", signed".to_string(),
                    },
                    None => String::new(),
                },
                if http.durable { ", durable" } else { "" },
                match &http.queue {
                    Some(queue) => format!(", queue {queue}"),
                    None => String::new(),
                }
            ),
        };
        outln!(
            "  route {} -> {}/{} ({extra})",
            route.label(),
            route.plugin,
            route.factory
        );
    }
    if !config.config.is_empty() {
        // Keys only: values may be secrets, and secrets say where from.
        let keys: Vec<String> = config
            .config
            .iter()
            .map(|(key, value)| value.described(key))
            .collect();
        outln!(
            "  config: {}",
            crate::logging::escape_controls(&keys.join(", "), false)
        );
    }
    let mut worst = WorstCase::of(&config.limits);
    worst.listener = crate::listener::worst_case_bytes(config);
    let machine = crate::config::machine_memory_bytes();
    outln!(
        "  worst case: {} live tasks could make the host hold {} ({} of task memory, \
         [limits] memory_total_mb; {} of stacks and bookkeeping; {} kept by the warm pool \
         after tasks end{}){}",
        worst.tasks,
        mib(worst.total()),
        mib(worst.task_memory),
        mib(worst.stacks),
        mib(worst.warm_kept),
        if worst.listener > 0 {
            format!(
                "; {} of the listener's connection and request buffers",
                mib(worst.listener)
            )
        } else {
            String::new()
        },
        match machine {
            Some(bytes) if worst.total() > bytes => format!(
                "; MORE than this machine's {}: lower [limits] memory_total_mb or instances{}",
                mib(bytes),
                if worst.listener > 0 {
                    ", or the routes' max_connections, send_buffer or max_message_bytes"
                } else {
                    ""
                }
            ),
            Some(bytes) => format!("; this machine has {}", mib(bytes)),
            None => String::new(),
        }
    );
    let handles = config.limits.handles_per_task as u64;
    outln!(
        "  each task may also make the host hold up to {handles} resource handles, {} of \
         them in HTTP header fields it builds ([limits] handles_per_task, http_fields_bytes; \
         per plugin too)",
        mib(handles.saturating_mul(config.limits.http_fields_bytes as u64))
    );
    match application.compile_cache() {
        Some(cache) => {
            let mut line = format!(
                "  compile cache {}: {} hit(s), {} miss(es)",
                cache.directory().display(),
                cache.hits(),
                cache.misses()
            );
            if cache.rejected() > 0 {
                line += &format!(", {} damaged entr(ies) replaced", cache.rejected());
            }
            if cache.unwritten() > 0 {
                line += &format!(", {} could not be stored", cache.unwritten());
            }
            if cache.evicted() > 0 {
                line += &format!(
                    ", {} least recently used entr(ies) removed",
                    cache.evicted()
                );
            }
            line += &format!(
                "; it holds {} of its {} (--compile-cache-max-mb)",
                mib(cache.stored_bytes()),
                mib(cache.max_bytes())
            );
            outln!("{line}");
        }
        None => outln!("  compile cache: off"),
    }
}

/// "1.5 GiB", "72 MiB".
fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / f64::from(1 << 20);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Writes the verbs' output; see [`outln!`].
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {error}");
        std::process::exit(1);
    }
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
/// Resolves at SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: the host polls it only
/// once it runs, and a signal in between (the control API already
/// serving, the tasks started) took the default action and killed the
/// process, exit by signal, no cleanup (a CI run of
/// `shutdown_signal_cancels_every_task_and_exits_zero`). Called after the
/// plugins are loaded, so a Ctrl-C during a long build still stops it at
/// once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl From<anyhow::Error> for Refused {
    fn from(error: anyhow::Error) -> Self {
        Refused(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_old_events_verb_still_follows_the_stream() {
        let cli = Cli::try_parse_from(["taskhost", "events", "--count", "1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Remote(remote::Verb::Stream { count: Some(1), .. })
        ));
    }

    #[test]
    fn a_worker_flag_is_an_index_or_main() {
        let cli = Cli::try_parse_from(["taskhost", "tasks", "--worker", "main"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Remote(remote::Verb::Tasks {
                worker: Some(crate::task::WorkerId::Main),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["taskhost", "tasks", "--worker", "first"]).is_err());
    }
}
