use crate::__private::bindings::taskhost::plugin::{app, types};
use crate::{Error, Result, TaskInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The `app` handle of the running task: Sanic's injected `app`.
///
/// Every task runs in its own instance of the plugin, so the handle always
/// speaks for the task it was passed to; there is nothing to look up or
/// share. It is cheap to create and carries no state of its own.
#[derive(Debug)]
pub struct App {
    _private: (),
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl App {
    #[doc(hidden)]
    pub fn new() -> Self {
        App { _private: () }
    }

    /// The application's name, from `name` in app.toml.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.info(format!("running in {}", app.name()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(&self) -> String {
        app::name()
    }

    /// Index of the worker this task runs on; `None` for a `scope = "main"`
    /// task, which runs once before the workers start.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// if app.worker() == Some(0) {
    ///     app.info("the first worker");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn worker(&self) -> Option<u32> {
        app::worker()
    }

    /// The `[config]` value for `key`, decoded as `T`.
    ///
    /// `Ok(None)` when the key is absent; an error naming the key when the
    /// value does not decode as `T`.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// // [config] greeting = "ahoy"
    /// let greeting: String = app.config("greeting")?.unwrap_or_else(|| "hello".into());
    /// # Ok(())
    /// # }
    /// ```
    pub fn config<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(json) = app::config(key) else {
            return Ok(None);
        };
        // serde's own message quotes the value ("invalid type: string
        // \"tok-...\", expected u64"), and a task's error reaches the log,
        // `taskhost tasks` and the API: a secret must not ride along. Say
        // what the value is and what it did not read as, never what it holds.
        let value: serde_json::Value = serde_json::from_str(&json)
            .map_err(|_| Error::msg(format!("config `{key}` is not JSON (a host bug)")))?;
        let kind = match &value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "a table",
        };
        T::deserialize(value).map(Some).map_err(|_| {
            Error::msg(format!(
                "config `{key}` is {kind}, which does not read as {} (its value is not shown: \
                 it may be a secret)",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Logs `message` at `level`, attributed to this task by the host.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.log(Level::Warn, "disk almost full");
    /// # Ok(())
    /// # }
    /// ```
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let level = match level {
            Level::Trace => types::Level::Trace,
            Level::Debug => types::Level::Debug,
            Level::Info => types::Level::Info,
            Level::Warn => types::Level::Warn,
            Level::Error => types::Level::Error,
        };
        app::log(level, message.as_ref());
    }

    /// Logs at debug level.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.debug(format!("step {}", 3));
    /// # Ok(())
    /// # }
    /// ```
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(Level::Debug, message)
    }

    /// Logs at info level.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.info("report written");
    /// # Ok(())
    /// # }
    /// ```
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message)
    }

    /// Logs at warn level.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.warn("retrying the upstream call");
    /// # Ok(())
    /// # }
    /// ```
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message)
    }

    /// Logs at error level.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.error("the feed answered 500");
    /// # Ok(())
    /// # }
    /// ```
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(Level::Error, message)
    }

    /// Suspends this task for `ms` milliseconds; other tasks keep running.
    ///
    /// Fails with a cancelled [`Error`] as soon as the task is cancelled:
    /// propagate it with `?` after any cleanup.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.sleep(250)?; // `?`: a cancel ends the task here, cooperatively
    /// # Ok(())
    /// # }
    /// ```
    pub fn sleep(&self, ms: u64) -> Result<()> {
        app::sleep(ms).map_err(Error::from_wit)
    }

    /// This task's id: unique in the host, never reused.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.info(format!("task {}", app.id()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn id(&self) -> u64 {
        app::task_id()
    }

    /// Which attempt of this task runs: 1, or more when its retry policy
    /// tried it again after a failure (each attempt in a fresh instance).
    /// With [`Error::permanent`](crate::Error::permanent), a task decides
    /// what is worth retrying.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// if app.attempt() > 1 {
    ///     app.warn(format!("attempt {}", app.attempt()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn attempt(&self) -> u32 {
        app::attempt()
    }

    /// A durable task's idempotency key: the one it was started with, or
    /// `durable-N` made by the host. A durable task runs at least once (a
    /// run cut off by a crash runs again from its start), so an effect it
    /// must not repeat should carry this key. `None` for a task that is
    /// not durable.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// if let Some(key) = app.idempotency_key() {
    ///     app.info(format!("charging once, as {key}"));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn idempotency_key(&self) -> Option<String> {
        app::idempotency_key()
    }

    /// The task's W3C `traceparent` when the host traces (`[telemetry]` in
    /// app.toml): the task's own span, to name as the parent of spans the
    /// guest makes itself or of a header it sends by other means. The host
    /// already puts one on every outbound HTTP request; none when tracing
    /// is off. It is the `TRACEPARENT` environment variable, as
    /// OpenTelemetry's environment carrier names it.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) {
    /// if let Some(parent) = app.traceparent() {
    ///     app.log(Level::Info, format!("in trace {}", &parent[3..35]));
    /// }
    /// # }
    /// ```
    pub fn traceparent(&self) -> Option<String> {
        std::env::var("TRACEPARENT").ok()
    }

    /// Sanic's `app.add_task`: starts an unnamed task of `factory` (of this
    /// plugin) on this worker with `args`, and returns its id. See
    /// [`App::task`] to name it or pick another plugin.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let id = app.add_task("slow_work", serde_json::json!({"ms": 100}))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_task(&self, factory: &str, args: impl Serialize) -> Result<u64> {
        self.task(factory).args(args).start()
    }

    /// Adds a schedule (or replaces one a guest added): `spec` has the
    /// fields of app.toml's `[[schedules]]`, e.g.
    /// `json!({"name": "refresh", "factory": "refresh", "every": "30s"})`
    /// (`plugin` defaults to this one). The host keeps it across restarts
    /// until [`App::remove_schedule`].
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// app.add_schedule(serde_json::json!({"name": "refresh", "factory": "refresh", "every": "30s"}))?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn add_schedule(&self, spec: impl Serialize) -> Result<()> {
        let spec = serde_json::to_string(&spec)?;
        app::add_schedule(&spec).map_err(Error::from_wit)
    }

    /// Removes a schedule a guest added; `false` if there was none.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let removed: bool = app.remove_schedule("refresh")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn remove_schedule(&self, name: &str) -> Result<bool> {
        app::remove_schedule(name).map_err(Error::from_wit)
    }

    /// Describes a task to start; finish with [`NewTask::start`].
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let id = app
    ///     .task("sync_customer")
    ///     .name("sync-acme")
    ///     .args(serde_json::json!({"customer": "acme"}))
    ///     .retry(Retry::attempts(3))
    ///     .start()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn task<'a>(&self, factory: &'a str) -> NewTask<'a> {
        NewTask {
            factory,
            plugin: None,
            name: None,
            args: Ok("null".into()),
            retry: None,
            durable: false,
            idempotency_key: None,
            placement: None,
            child: false,
            restart: None,
        }
    }

    /// Waits until `task` (an id, a name of this worker, or a [`Placed`])
    /// has ended and returns its final info: its state and its result or
    /// error ([`TaskInfo::result_as`]). A task that has ended returns at
    /// once. `None` when `timeout_ms` passes first: the task goes on.
    /// Fails with a not-found [`Error`], an invalid-args one for this task
    /// itself or its parent, a cancelled one as soon as this task is
    /// cancelled.
    pub fn join(
        &self,
        task: impl Into<TaskRef>,
        timeout_ms: Option<u64>,
    ) -> Result<Option<TaskInfo>> {
        app::join(&task.into().0, timeout_ms)
            .map(|ended| ended.map(TaskInfo::from))
            .map_err(Error::from_wit)
    }

    /// Waits until every task of `tasks` has ended (fan-in): their final
    /// infos in the same order; `None` when `timeout_ms` passes first. At
    /// most 10,000 tasks.
    pub fn join_all<T: Into<TaskRef>>(
        &self,
        tasks: impl IntoIterator<Item = T>,
        timeout_ms: Option<u64>,
    ) -> Result<Option<Vec<TaskInfo>>> {
        let tasks: Vec<app::TaskRef> = tasks.into_iter().map(|t| t.into().0).collect();
        app::join_all(&tasks, timeout_ms)
            .map(|ended| ended.map(|infos| infos.into_iter().map(TaskInfo::from).collect()))
            .map_err(Error::from_wit)
    }

    /// Waits until one task of `tasks` has ended: its index in `tasks` and
    /// its final info (of tasks already ended, the first listed); `None`
    /// when `timeout_ms` passes first. The others go on.
    pub fn join_any<T: Into<TaskRef>>(
        &self,
        tasks: impl IntoIterator<Item = T>,
        timeout_ms: Option<u64>,
    ) -> Result<Option<(usize, TaskInfo)>> {
        let tasks: Vec<app::TaskRef> = tasks.into_iter().map(|t| t.into().0).collect();
        app::join_any(&tasks, timeout_ms)
            .map(|ended| ended.map(|(index, info)| (index as usize, TaskInfo::from(info))))
            .map_err(Error::from_wit)
    }

    /// The task of this worker named `name`, live or ended (until purged);
    /// a not-found [`Error`] otherwise.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let info = app.get_task("sync-acme")?;
    /// if info.state.is_ended() {
    ///     app.info(format!("ended {}", info.state.as_str()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_task(&self, name: &str) -> Result<TaskInfo> {
        app::get_task(name)
            .map(TaskInfo::from)
            .map_err(Error::from_wit)
    }

    /// Cancels the task named `name` and returns once it has ended, with its
    /// final info. Cancelling a task that already ended just returns its
    /// info. A task being cancelled may still call it in its cleanup and
    /// wait (to purge the target after); only once this task is forced
    /// does it return a cancelled [`Error`] at once.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let ended = app.cancel_task("receiver")?; // returns once it has ended
    /// app.purge_tasks();
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel_task(&self, name: &str) -> Result<TaskInfo> {
        app::cancel_task(name)
            .map(TaskInfo::from)
            .map_err(Error::from_wit)
    }

    /// Every registered task of this worker, oldest first: a snapshot, safe
    /// to hold while tasks come and go.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// for task in app.tasks() {
    ///     app.debug(format!("{:?} is {}", task.name, task.state.as_str()));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn tasks(&self) -> Vec<TaskInfo> {
        app::tasks().into_iter().map(TaskInfo::from).collect()
    }

    /// Drops every ended task of this worker from the registry (freeing
    /// their names); returns how many.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let purged: u32 = app.purge_tasks();
    /// # Ok(())
    /// # }
    /// ```
    pub fn purge_tasks(&self) -> u32 {
        app::purge_tasks()
    }

    /// Wakes every task, on every worker, waiting for `event`, handing each
    /// `payload`; returns how many woke. Fails with a limit [`Error`] for a
    /// payload over the app's `event_payload_bytes`.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// let woken: u32 = app.dispatch("feed.changed", r#"{"change": 7}"#)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn dispatch(&self, event: &str, payload: &str) -> Result<u32> {
        app::dispatch(event, payload).map_err(Error::from_wit)
    }

    /// Waits for the next dispatch of `event` (or, with a trailing `*`, of
    /// any event starting with the rest) and returns its payload; `None`
    /// if `timeout_ms` passes first. Fails with a cancelled [`Error`] when
    /// the task is cancelled.
    ///
    /// ```no_run
    /// # use taskhost_guest_sdk::*;
    /// # fn example(app: &App) -> Result<()> {
    /// match app.wait_event("feed.*", Some(60_000))? {
    ///     Some(payload) => app.info(format!("changed: {payload}")),
    ///     None => app.info("no change within a minute"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_event(&self, event: &str, timeout_ms: Option<u64>) -> Result<Option<String>> {
        app::wait_event(event, timeout_ms).map_err(Error::from_wit)
    }
}

/// A task about to be started by [`App::task`].
#[must_use = "a task is only started by `.start()`"]
pub struct NewTask<'a> {
    factory: &'a str,
    plugin: Option<&'a str>,
    name: Option<&'a str>,
    args: Result<String>,
    retry: Option<Retry>,
    durable: bool,
    idempotency_key: Option<&'a str>,
    placement: Option<app::Placement>,
    child: bool,
    restart: Option<Restart>,
}

/// A task to join ([`App::join`]): its id (`u64`), its name on this
/// worker (`&str`, `String`) or where [`NewTask::start_on`] placed it
/// ([`Placed`]).
#[derive(Debug, Clone)]
pub struct TaskRef(app::TaskRef);

impl From<u64> for TaskRef {
    fn from(id: u64) -> TaskRef {
        TaskRef(app::TaskRef::Id(id))
    }
}

impl From<&u64> for TaskRef {
    fn from(id: &u64) -> TaskRef {
        TaskRef(app::TaskRef::Id(*id))
    }
}

impl From<&str> for TaskRef {
    fn from(name: &str) -> TaskRef {
        TaskRef(app::TaskRef::Name(name.to_string()))
    }
}

impl From<String> for TaskRef {
    fn from(name: String) -> TaskRef {
        TaskRef(app::TaskRef::Name(name))
    }
}

impl From<Placed> for TaskRef {
    fn from(placed: Placed) -> TaskRef {
        TaskRef(app::TaskRef::Placed(app::PlacedTask {
            host: placed.host,
            id: placed.id,
        }))
    }
}

impl From<&Placed> for TaskRef {
    fn from(placed: &Placed) -> TaskRef {
        TaskRef::from(placed.clone())
    }
}

/// How a task is tried again after a failed attempt (each attempt in a
/// fresh instance; [`App::attempt`] says which one runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (1..=100).
    pub attempts: u32,
    /// The wait after the first failure.
    pub initial_ms: u64,
    /// The longest wait (at most a day).
    pub max_ms: u64,
    /// Double the wait after each failure (else always `initial_ms`).
    pub exponential: bool,
    /// Spread each wait over [wait/2, wait].
    pub jitter: bool,
}

impl Retry {
    /// `attempts` in all, with the host's defaults: 200 ms, doubling up to
    /// a minute, jittered.
    pub fn attempts(attempts: u32) -> Retry {
        Retry {
            attempts,
            initial_ms: 200,
            max_ms: 60_000,
            exponential: true,
            jitter: true,
        }
    }
}

/// How a supervised task is started again each time a run ends
/// ([`NewTask::restart`]; docs/tasks.md, "Supervised tasks"): the wait
/// doubles from 1 s to 1 min over restarts in a row (starting over after a
/// run of a minute), and more than 5 restarts within a minute end it
/// failed, unless set otherwise. Not after a cancel, nor after a failure
/// the next run would repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    always: bool,
    intensity: Option<u32>,
    period_ms: Option<u64>,
    initial_ms: Option<u64>,
    max_ms: Option<u64>,
}

impl Restart {
    /// Restarts a run that failed (after its retries, if any).
    pub fn on_failure() -> Restart {
        Restart {
            always: false,
            intensity: None,
            period_ms: None,
            initial_ms: None,
            max_ms: None,
        }
    }

    /// Restarts a run however it ended, done or failed.
    pub fn always() -> Restart {
        Restart {
            always: true,
            ..Restart::on_failure()
        }
    }

    /// At most `restarts` (at least 1) within `period_ms`; one more ends
    /// the task failed.
    pub fn intensity(mut self, restarts: u32, period_ms: u64) -> Restart {
        self.intensity = Some(restarts);
        self.period_ms = Some(period_ms);
        self
    }

    /// The first wait, and the longest (a run that long starts the waits
    /// over).
    pub fn backoff(mut self, initial_ms: u64, max_ms: u64) -> Restart {
        self.initial_ms = Some(initial_ms);
        self.max_ms = Some(max_ms);
        self
    }
}

impl<'a> NewTask<'a> {
    /// Names the task; names are unique within a worker until purged.
    pub fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    /// Takes the factory from another plugin (default: this one).
    pub fn plugin(mut self, plugin: &'a str) -> Self {
        self.plugin = Some(plugin);
        self
    }

    /// The task's arguments, encoded as JSON.
    pub fn args(mut self, args: impl Serialize) -> Self {
        self.args = serde_json::to_string(&args).map_err(Error::from);
        self
    }

    /// Tries it again after a failure.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Records it in the app's storage before [`NewTask::start`] returns:
    /// it runs again after a crash until it ends (at least once).
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Waits in `queue` (`[[queues]]` in app.toml, or `default`) until the
    /// queue lets it start; its state is `queued` meanwhile.
    pub fn queue(mut self, queue: &str) -> Self {
        self.placed().queue = queue.to_string();
        self
    }

    /// Its key in its queue (per-key limits, turns between keys, dedupe).
    /// Without [`NewTask::queue`]: the `default` queue.
    pub fn key(mut self, key: &str) -> Self {
        self.placed().key = Some(key.to_string());
        self
    }

    /// From -100 to 100, higher starts first (default 0). Without
    /// [`NewTask::queue`]: the `default` queue.
    pub fn priority(mut self, priority: i32) -> Self {
        self.placed().priority = Some(priority);
        self
    }

    /// Starts no sooner than `ms` milliseconds from now, waiting in its
    /// queue meanwhile. Without [`NewTask::queue`]: the `default` queue.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.placed().start = Some(app::StartAt::DelayMs(ms));
        self
    }

    /// Starts no sooner than the Unix time `ms` (milliseconds). Without
    /// [`NewTask::queue`]: the `default` queue.
    pub fn run_at_ms(mut self, ms: u64) -> Self {
        self.placed().start = Some(app::StartAt::RunAtMs(ms));
        self
    }

    fn placed(&mut self) -> &mut app::Placement {
        self.placement.get_or_insert_with(|| app::Placement {
            queue: "default".into(),
            key: None,
            priority: None,
            start: None,
        })
    }

    /// Starts it as this task's child: it is cancelled when this task is
    /// cancelled or this attempt ends, however it ends (no child outlives
    /// the work that started it). Not with [`NewTask::durable`], nor on
    /// other hosts.
    pub fn child(mut self) -> Self {
        self.child = true;
        self
    }

    /// Supervises it: started again each time a run ends, as `restart`
    /// says. Not with [`NewTask::durable`].
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = Some(restart);
        self
    }

    /// With [`NewTask::durable`]: a second start with the same key returns
    /// the first task's id and starts nothing.
    pub fn idempotency_key(mut self, key: &'a str) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Starts the task on this worker and returns its id once the factory
    /// has accepted the arguments (and, if durable, it is recorded).
    pub fn start(self) -> Result<u64> {
        if self.retry.is_none()
            && !self.durable
            && self.idempotency_key.is_none()
            && self.placement.is_none()
            && !self.child
            && self.restart.is_none()
        {
            let args = self.args?;
            return app::add_task(self.plugin, self.factory, &args, self.name)
                .map_err(Error::from_wit);
        }
        let (plugin, factory) = (self.plugin, self.factory);
        let (args, options) = self.options()?;
        app::start_task(plugin, factory, &args, &options).map_err(Error::from_wit)
    }

    /// Starts the task on other hosts of the app's cluster: `host` is
    /// `"any"` (one host the cluster picks), a host's name, or `"all"`
    /// (one task on every host). Returns where each task runs. Fails with
    /// `failed` when the app has no `[cluster]` or no host answers.
    pub fn start_on(self, host: &str) -> Result<Vec<Placed>> {
        self.start_on_hosts(host, false)
    }

    /// [`NewTask::start_on`], with the task's name unique across the whole
    /// cluster rather than within its worker (`duplicate-name` if any host
    /// has it).
    pub fn start_on_with_cluster_name(self, host: &str) -> Result<Vec<Placed>> {
        self.start_on_hosts(host, true)
    }

    fn start_on_hosts(self, host: &str, cluster_name: bool) -> Result<Vec<Placed>> {
        let (plugin, factory) = (self.plugin, self.factory);
        let (args, options) = self.options()?;
        let placed = app::start_task_on(host, plugin, factory, &args, &options, cluster_name)
            .map_err(Error::from_wit)?;
        Ok(placed
            .into_iter()
            .map(|p| Placed {
                host: p.host,
                id: p.id,
            })
            .collect())
    }

    fn options(self) -> Result<(String, app::TaskOptions)> {
        let args = self.args?;
        let options = app::TaskOptions {
            name: self.name.map(str::to_string),
            retry: self.retry.map(|r| app::RetryPolicy {
                attempts: r.attempts,
                initial_ms: r.initial_ms,
                max_ms: r.max_ms,
                exponential: r.exponential,
                jitter: r.jitter,
            }),
            durable: self.durable,
            idempotency_key: self.idempotency_key.map(str::to_string),
            placement: self.placement,
            child: self.child,
            restart: self.restart.map(|r| app::RestartPolicy {
                when: if r.always {
                    app::RestartWhen::Always
                } else {
                    app::RestartWhen::OnFailure
                },
                intensity: r.intensity,
                period_ms: r.period_ms,
                initial_ms: r.initial_ms,
                max_ms: r.max_ms,
            }),
        };
        Ok((args, options))
    }
}

/// Where a task started by [`NewTask::start_on`] runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placed {
    /// The host of the cluster that runs it.
    pub host: String,
    /// Its id on that host.
    pub id: u64,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}
