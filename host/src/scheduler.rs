//! Schedules: tasks started on a timer or a cron expression, each a named
//! thing with a loop of its own that operators pause, resume and trigger
//! and guests add and remove.
//!
//! A schedule's loop sleeps until its next tick, then starts the tick's
//! task(s) on the workers (named `SCHEDULE@TICK`), unless its `overlap`
//! policy says otherwise. After each tick it records how far it got in
//! storage, so the next start of the app knows which ticks fell while the
//! host was down and handles them by `catch_up`. Ticks are announced as
//! lifecycle events (`schedule_fired`, `schedule_missed`).

use crate::bindings::GuestError;
use crate::config::{
    CatchUp, MAX_CATCH_UP, Overlap, ScheduleConfig, ScheduleScope, ScheduleSpec, TaskSpec,
    tick_label,
};
use crate::lifecycle::{LifecycleEvent, ScheduleTrigger};
use crate::registry::TaskHandle;
use crate::storage::{ScheduleMark, ScheduleStore};
use crate::task::{TaskState, unix_millis};
use crate::worker::{ScheduleControl, TaskEnv, WorkerCtx};
use anyhow::Result;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A tick later than this is late, not due: the ticks it passed count as
/// missed (the machine slept, or the host was starved).
const LATE: Duration = Duration::from_secs(1);

/// Who runs a schedule's tick when several hosts run the same schedules
/// (a cluster): the first host to claim it. The cluster implements it, so
/// the scheduler never names the cluster.
pub trait TickClaims: Send + Sync {
    /// Whether this host won tick `tick` (its label) of `schedule`.
    fn claim<'a>(
        &'a self,
        schedule: &'a str,
        tick: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;
}

/// The host's schedules and their loops.
pub struct Scheduler {
    /// In a cluster: who runs each tick (the cluster's claims).
    claims: Option<Arc<dyn TickClaims>>,
    env: Arc<TaskEnv>,
    workers: Vec<Arc<WorkerCtx>>,
    storage: Arc<dyn ScheduleStore>,
    schedules: Mutex<BTreeMap<String, Arc<Schedule>>>,
    /// Held by `add` from its count to its insert, so that adds at once
    /// cannot together pass the bounds.
    adding: tokio::sync::Mutex<()>,
    loops: TaskTracker,
    stop: CancellationToken,
}

/// One schedule: its config, its state, and the way to its loop.
struct Schedule {
    config: ScheduleConfig,
    /// Added at run time by a guest (and kept in storage), not app.toml.
    added: bool,
    state: Mutex<State>,
    commands: mpsc::UnboundedSender<Command>,
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    paused: bool,
    runs: u64,
    misses: u64,
    next: Option<SystemTime>,
    last_tick: Option<SystemTime>,
    /// The tasks of the last run: which worker, which handle, its name.
    last: Vec<(Arc<WorkerCtx>, TaskHandle, String)>,
    /// A tick waits for the running ones (`overlap = "queue"`).
    queued: Option<SystemTime>,
    /// Every tick up to here was handled (what storage records).
    seen_until: Option<SystemTime>,
}

impl State {
    fn running(&self) -> bool {
        self.last.iter().any(|(_, handle, _)| !handle.is_ended())
    }
}

enum Command {
    /// Run now; answers with the started tasks' names.
    Trigger(oneshot::Sender<Result<Vec<String>, String>>),
    /// Something changed (pause, resume): look again.
    Wake,
}

/// A schedule as `taskhost schedules` shows it.
#[derive(Debug, Clone)]
pub struct ScheduleInfo {
    /// Unique among the app's schedules; its tasks are named `NAME@TICK`.
    pub name: String,
    /// The plugin its runs start from.
    pub plugin: String,
    /// The factory its runs start.
    pub factory: String,
    /// `every 30s` or `cron "..." (zone)`.
    pub when: String,
    /// Where a tick's task runs: one worker (`any`) or every worker.
    pub scope: ScheduleScope,
    /// What a tick does while the previous run goes on.
    pub overlap: Overlap,
    /// What a start does about ticks missed while the host was down.
    pub catch_up: CatchUp,
    /// Added at run time by a guest (and kept in storage), not in app.toml.
    pub added: bool,
    /// Paused by an operator; kept across restarts.
    pub paused: bool,
    /// When it ticks next; none while paused, or for a cron expression that
    /// never fires again.
    pub next: Option<SystemTime>,
    /// The tick of the last run since this host started; none before one.
    pub last_tick: Option<SystemTime>,
    /// The name of the last run's task (of a `worker` schedule, the first one
    /// still going, else the first); kept after it is purged.
    pub last_task: Option<String>,
    /// How the last run's task ended (or where it is); of a `worker`
    /// schedule, the first one still going, else the first one's.
    pub last_state: Option<TaskState>,
    /// Runs fired since this host started: ticks, triggers, catch-ups and
    /// queued ticks.
    pub runs: u64,
    /// Ticks that did not run since this host started: skipped by `overlap`,
    /// missed while down or asleep.
    pub misses: u64,
}

/// Why an operation on a schedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// No schedule of that name (app.toml's or added).
    #[error("no schedule named `{0}`")]
    NotFound(String),
    /// The request does not fit the schedule's policy (a trigger while
    /// the last run goes on under `overlap = "skip"`, say).
    #[error("{0}")]
    Conflict(String),
    /// A schedule a guest adds that does not check (a bad field, an unknown
    /// plugin), or that does not encode.
    #[error("{0}")]
    Invalid(String),
    /// Storage did not take the change, so it was not made (a pause, an added
    /// schedule).
    #[error("{0:#}")]
    Storage(anyhow::Error),
    /// Adding would pass `[limits] schedules_per_plugin` or
    /// `schedules_per_app`.
    #[error("{0}")]
    Limit(crate::config::Limit),
}

impl Scheduler {
    /// Starts every schedule of app.toml and those guests added before
    /// (kept in storage), first handling the ticks that fell while the
    /// host was down. `workers` are the ones ticks start tasks on.
    pub async fn start(
        env: Arc<TaskEnv>,
        workers: Vec<Arc<WorkerCtx>>,
        configs: &[ScheduleConfig],
        claims: Option<Arc<dyn TickClaims>>,
    ) -> Result<Arc<Scheduler>> {
        let storage = env.storage.schedules().clone();
        let scheduler = Arc::new(Scheduler {
            claims,
            env: env.clone(),
            workers,
            storage,
            schedules: Mutex::default(),
            adding: tokio::sync::Mutex::new(()),
            loops: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        for config in configs {
            scheduler.launch(config.clone(), false).await?;
        }
        {
            let added = scheduler.storage.added_schedules().await?;
            let most = env.app.limits.schedules_per_app;
            if added.len() > most {
                tracing::warn!(
                    "storage holds {} schedules added by guests, more than [limits] \
                     schedules_per_app ({most}): only the first {most} by name run; remove the \
                     others (`remove-schedule`) or raise the bound",
                    added.len()
                );
            }
            for (name, text) in added.into_iter().take(most) {
                if scheduler.lock().contains_key(&name) {
                    tracing::warn!(
                        "schedule {name}, added by a guest, has the name of one in app.toml: \
                         app.toml's runs"
                    );
                    continue;
                }
                let config = serde_json::from_str::<ScheduleSpec>(&text)
                    .map_err(anyhow::Error::from)
                    .and_then(|spec| spec.checked(None));
                match config {
                    Ok(config) => scheduler.launch(config, true).await?,
                    Err(error) => tracing::error!(
                        "schedule {name}, added by a guest, no longer reads back ({error:#}); \
                         it does not run"
                    ),
                }
            }
        }
        let control: Arc<dyn ScheduleControl> = scheduler.clone();
        let _ = env.schedules.set(Arc::downgrade(&control));
        Ok(scheduler)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Schedule>>> {
        self.schedules.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<Schedule>, ScheduleError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| ScheduleError::NotFound(name.to_string()))
    }

    /// Starts the loop of one schedule, after its catch-up.
    async fn launch(self: &Arc<Self>, config: ScheduleConfig, added: bool) -> Result<()> {
        let mark = self.storage.schedule_mark(&config.name).await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let schedule = Arc::new(Schedule {
            config,
            added,
            state: Mutex::new(State {
                paused: mark.is_some_and(|m| m.paused),
                ..State::default()
            }),
            commands,
            stop: self.stop.child_token(),
        });
        // One lock for the swap: a replaced schedule's loop always stops.
        let replaced = self
            .lock()
            .insert(schedule.config.name.clone(), schedule.clone());
        if let Some(old) = replaced {
            old.stop.cancel();
        }
        let now = SystemTime::now();
        if let Some(mark) = mark {
            let from = UNIX_EPOCH + Duration::from_millis(mark.seen_until_ms);
            self.catch_up(&schedule, from, now, mark.paused).await;
        }
        schedule.state().seen_until = Some(now);
        self.record(&schedule).await;
        let scheduler = self.clone();
        self.loops
            .spawn(async move { scheduler.run(schedule, receiver).await });
        Ok(())
    }

    /// Handles the ticks in (`from`, `now`] that fell while the host was
    /// down, by the schedule's `catch_up`. A paused schedule had none due.
    async fn catch_up(
        &self,
        schedule: &Arc<Schedule>,
        from: SystemTime,
        now: SystemTime,
        paused: bool,
    ) {
        if paused {
            return;
        }
        let config = &schedule.config;
        let (missed, last) = config.when.ticks_between(from, now, 1_000_000);
        let Some(last) = last else {
            return;
        };
        let ran = match config.catch_up {
            CatchUp::None => 0,
            CatchUp::One => {
                // A run that did not start said why (log, events).
                let _ = self.fire(schedule, last, ScheduleTrigger::CatchUp).await;
                missed
            }
            CatchUp::All => {
                let mut ran = 0;
                let mut at = from;
                while ran < missed.min(MAX_CATCH_UP) {
                    let Some(tick) = config.when.next_after(at) else {
                        break;
                    };
                    let _ = self.fire(schedule, tick, ScheduleTrigger::CatchUp).await;
                    ran += 1;
                    at = tick;
                }
                ran
            }
        };
        if ran < missed {
            let reason = match config.catch_up {
                CatchUp::None => "the host was down (catch_up = \"none\")".to_string(),
                _ => format!("the host was down; catch_up = \"all\" runs at most {MAX_CATCH_UP}"),
            };
            self.missed(schedule, missed - ran, last, reason);
        }
    }

    fn missed(&self, schedule: &Schedule, count: u64, tick: SystemTime, reason: String) {
        schedule.state().misses += count;
        self.announce(LifecycleEvent::ScheduleMissed {
            schedule: schedule.config.name.clone(),
            tick: tick_label(tick),
            missed: count,
            reason,
        });
    }

    fn announce(&self, event: LifecycleEvent) {
        crate::logging::lifecycle(&event);
        let _ = self.env.lifecycle.send(event);
    }

    /// Records how far the schedule got, and whether it is paused.
    async fn record(&self, schedule: &Schedule) -> Option<anyhow::Error> {
        let mark = {
            let state = schedule.state();
            ScheduleMark {
                seen_until_ms: unix_millis(state.seen_until.unwrap_or_else(SystemTime::now)),
                paused: state.paused,
            }
        };
        let error = self
            .storage
            .set_schedule_mark(&schedule.config.name, mark)
            .await
            .err()?;
        tracing::error!(
            "schedule {}: cannot record its progress ({error:#}); after a restart its \
             catch_up may run ticks again",
            schedule.config.name
        );
        Some(error)
    }

    /// The loop of one schedule, until the scheduler stops or the schedule
    /// is removed.
    async fn run(
        self: Arc<Self>,
        schedule: Arc<Schedule>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            let seen = schedule.state().seen_until.unwrap_or_else(SystemTime::now);
            let next = schedule.config.when.next_after(seen);
            schedule.state().next = next;
            let queued = schedule.state().queued;
            let sleep = async {
                match next.map(|t| t.duration_since(SystemTime::now()).unwrap_or_default()) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = schedule.stop.cancelled() => return,
                () = sleep => {
                    let Some(tick) = next else { continue };
                    let now = SystemTime::now();
                    if now.duration_since(tick).unwrap_or_default() > LATE {
                        // Asleep or starved: what passed is missed, not due.
                        let (count, last) =
                            schedule.config.when.ticks_between(seen, now, 1_000_000);
                        self.missed(
                            &schedule,
                            count,
                            last.unwrap_or(tick),
                            "the host did not get to it in time (asleep or overloaded)".into(),
                        );
                        schedule.state().seen_until = Some(last.unwrap_or(tick));
                    } else {
                        let _ = self.fire(&schedule, tick, ScheduleTrigger::Tick).await;
                        schedule.state().seen_until = Some(tick);
                    }
                    self.record(&schedule).await;
                }
                command = commands.recv() => match command {
                    Some(Command::Trigger(reply)) => {
                        let fired = self.fire(&schedule, SystemTime::now(), ScheduleTrigger::Manual).await;
                        let _ = reply.send(fired);
                    }
                    Some(Command::Wake) => {}
                    None => return,
                },
                () = until_ended(&schedule), if queued.is_some() => {
                    let queued = schedule.state().queued.take();
                    if let Some(tick) = queued {
                        let _ = self.fire(&schedule, tick, ScheduleTrigger::Queued).await;
                    }
                }
            }
        }
    }

    /// Starts the tick's task(s), as the schedule's policies allow;
    /// returns their names, or why none started.
    async fn fire(
        &self,
        schedule: &Schedule,
        tick: SystemTime,
        trigger: ScheduleTrigger,
    ) -> Result<Vec<String>, String> {
        let config = &schedule.config;
        {
            let mut state = schedule.state();
            if state.paused && matches!(trigger, ScheduleTrigger::Tick | ScheduleTrigger::Queued) {
                return Ok(Vec::new());
            }
            // A backlog (catch_up) and an explicit queue entry run anyway.
            let waits = matches!(trigger, ScheduleTrigger::Tick | ScheduleTrigger::Manual);
            if waits && state.running() {
                match config.overlap {
                    Overlap::Allow => {}
                    Overlap::Skip => {
                        drop(state);
                        let reason = "its previous run was still going (overlap = \"skip\")";
                        if trigger == ScheduleTrigger::Tick {
                            self.missed(schedule, 1, tick, reason.into());
                        }
                        return Err(reason.into());
                    }
                    Overlap::Queue => {
                        if state.queued.replace(tick).is_some() {
                            drop(state);
                            self.missed(
                                schedule,
                                1,
                                tick,
                                "a run was already waiting for the previous one (overlap = \
                                 \"queue\" holds one)"
                                    .into(),
                            );
                        }
                        return Ok(Vec::new());
                    }
                }
            }
        }
        if let (Some(jitter), ScheduleTrigger::Tick) = (config.jitter, trigger) {
            let spread = jitter.as_nanos().min(u64::MAX as u128) as u64;
            let wait = getrandom::u64().unwrap_or(0) % spread.max(1);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_nanos(wait)) => {}
                () = schedule.stop.cancelled() => return Ok(Vec::new()),
            }
            // Paused while it waited: the tick is dropped as a paused one.
            if schedule.state().paused {
                return Ok(Vec::new());
            }
        }
        let targets: Vec<Arc<WorkerCtx>> = match config.scope {
            ScheduleScope::Worker => self.workers.clone(),
            ScheduleScope::Any => {
                let runs = schedule.state().runs as usize;
                self.workers
                    .get(runs % self.workers.len().max(1))
                    .cloned()
                    .into_iter()
                    .collect()
            }
        };
        let name = format!("{}@{}", config.name, tick_label(tick));
        // In a cluster, a tick runs on one host: the first to claim it.
        // An operator's trigger is this host's own.
        if let Some(claims) = &self.claims
            && trigger != ScheduleTrigger::Manual
            && !claims.claim(&config.name, &tick_label(tick)).await
        {
            return Ok(Vec::new());
        }
        let Some(plugin) = self.env.plugin(&config.plugin) else {
            let error = format!("plugin `{}` is not loaded", config.plugin);
            tracing::error!("schedule {}: {error}", config.name);
            return Err(error);
        };
        let mut started = Vec::new();
        let mut errors = Vec::new();
        for worker in targets {
            let spec = TaskSpec {
                factory: config.factory.clone(),
                args: config.args.clone(),
                name: Some(name.clone()),
                retry: config.retry,
                restart: None,
                on_load: None,
                trace: None,
                durable: config.durable,
                resume: false,
                // Per worker only where each worker runs the tick: an `any`
                // run is one task whichever worker it lands on.
                idempotency_key: config.durable.then(|| match config.scope {
                    ScheduleScope::Any => {
                        format!("schedule/{}/{}", config.name, unix_millis(tick))
                    }
                    ScheduleScope::Worker => format!(
                        "schedule/{}/{}/{}",
                        config.name,
                        unix_millis(tick),
                        worker.id()
                    ),
                }),
                connection: None,
                queue: config.queue.clone(),
                parent: None,
            };
            match worker.start_task(plugin.clone(), spec).await {
                Ok(handle) => started.push((worker, handle, name.clone())),
                Err(error) => {
                    tracing::error!(
                        "schedule {}: cannot start {name} on worker {}: {error}",
                        config.name,
                        worker.id()
                    );
                    errors.push(error.to_string());
                }
            }
        }
        let names: Vec<String> = started.iter().map(|(_, _, n)| n.clone()).collect();
        {
            let mut state = schedule.state();
            state.runs += 1;
            state.last_tick = Some(tick);
            if !started.is_empty() {
                state.last = started;
            }
        }
        self.announce(LifecycleEvent::ScheduleFired {
            schedule: config.name.clone(),
            tick: tick_label(tick),
            trigger,
            tasks: names.clone(),
        });
        if names.is_empty() && !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(names)
    }

    /// Every schedule, by name.
    pub fn list(&self) -> Vec<ScheduleInfo> {
        self.lock().values().map(|s| s.info()).collect()
    }

    /// Pauses (`true`) or resumes a schedule; recorded, so it holds across
    /// restarts. Ticks while paused are neither run nor missed.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<ScheduleInfo, ScheduleError> {
        let schedule = self.get(name)?;
        // Ticks that fell while paused are not due after a resume.
        let seen_until = if paused {
            schedule.state().seen_until
        } else {
            Some(SystemTime::now())
        };
        // Recorded first: a pause the storage did not take is not made.
        {
            let mark = ScheduleMark {
                seen_until_ms: unix_millis(seen_until.unwrap_or_else(SystemTime::now)),
                paused,
            };
            self.storage
                .set_schedule_mark(name, mark)
                .await
                .map_err(ScheduleError::Storage)?;
        }
        {
            let mut state = schedule.state();
            state.paused = paused;
            state.seen_until = seen_until;
        }
        let _ = schedule.commands.send(Command::Wake);
        Ok(schedule.info())
    }

    /// Runs the schedule now (paused or not), as its `overlap` allows;
    /// returns the started tasks' names.
    pub async fn trigger(&self, name: &str) -> Result<Vec<String>, ScheduleError> {
        let schedule = self.get(name)?;
        let (reply, answer) = oneshot::channel();
        schedule
            .commands
            .send(Command::Trigger(reply))
            .map_err(|_| ScheduleError::Conflict("the schedule is stopping".into()))?;
        answer
            .await
            .map_err(|_| ScheduleError::Conflict("the schedule is stopping".into()))?
            .map_err(ScheduleError::Conflict)
    }

    /// Adds (or replaces) a schedule at run time, kept in storage so it
    /// runs after restarts too. One of app.toml cannot be replaced.
    pub async fn add(
        self: &Arc<Self>,
        spec: ScheduleSpec,
        plugin: &str,
    ) -> Result<(), ScheduleError> {
        let config = spec
            .checked(Some(plugin))
            .map_err(|e| ScheduleError::Invalid(format!("{e:#}")))?;
        if self.env.plugin(&config.plugin).is_none() {
            return Err(ScheduleError::Invalid(format!(
                "no plugin named `{}`",
                config.plugin
            )));
        }
        if let Some(placement) = &config.queue {
            let queue = self
                .env
                .queues
                .get(&placement.queue)
                .map_err(ScheduleError::Invalid)?;
            // As app.toml's are checked: a run that could never wait in
            // its queue is refused now, not at each tick.
            crate::config::key_of(&queue.config(), placement.key.as_deref(), &config.args)
                .map_err(ScheduleError::Invalid)?;
        }
        let _adding = self.adding.lock().await;
        if let Some(existing) = self.lock().get(&config.name)
            && !existing.added
        {
            return Err(ScheduleError::Conflict(format!(
                "schedule `{}` is defined in app.toml; pick another name",
                config.name
            )));
        }
        self.check_room(&config)?;
        {
            let mut stored = config.spec.clone();
            stored.plugin = Some(config.plugin.clone());
            let text = serde_json::to_string(&stored)
                .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
            self.storage
                .add_schedule(&config.name, &text)
                .await
                .map_err(ScheduleError::Storage)?;
        }
        self.launch(config, true)
            .await
            .map_err(ScheduleError::Storage)
    }

    /// Whether one more added schedule fits `[limits] schedules_per_plugin`
    /// and `schedules_per_app` (replacing one of the same name adds none).
    fn check_room(&self, config: &ScheduleConfig) -> Result<(), ScheduleError> {
        let limits = &self.env.app.limits;
        let schedules = self.lock();
        if schedules.get(&config.name).is_some_and(|s| s.added) {
            return Ok(());
        }
        let added = schedules.values().filter(|s| s.added);
        let of_plugin = added
            .clone()
            .filter(|s| s.config.plugin == config.plugin)
            .count();
        let all = added.count();
        let over = |what: String, max: usize, got: usize, setting| {
            ScheduleError::Limit(crate::config::Limit {
                what,
                max: max as u64,
                got: got as u64,
                unit: crate::config::LimitUnit::Schedules,
                setting: Some(setting),
            })
        };
        if of_plugin >= limits.schedules_per_plugin {
            return Err(over(
                format!("schedules added by plugin {}", config.plugin),
                limits.schedules_per_plugin,
                of_plugin + 1,
                "schedules_per_plugin",
            ));
        }
        if all >= limits.schedules_per_app {
            return Err(over(
                "schedules added at run time".to_string(),
                limits.schedules_per_app,
                all + 1,
                "schedules_per_app",
            ));
        }
        Ok(())
    }

    /// Removes a schedule a guest added; its running tasks go on.
    pub async fn remove(&self, name: &str) -> Result<bool, ScheduleError> {
        let Some(schedule) = self.lock().get(name).cloned() else {
            return Ok(false);
        };
        if !schedule.added {
            return Err(ScheduleError::Conflict(format!(
                "schedule `{name}` is defined in app.toml: pause it instead"
            )));
        }
        self.storage
            .remove_schedule(name)
            .await
            .map_err(ScheduleError::Storage)?;
        self.lock().remove(name);
        schedule.stop.cancel();
        Ok(true)
    }

    /// Stops every loop (the tasks they started go on) and waits for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.loops.close();
        self.loops.wait().await;
    }
}

/// Resolves once every task of the schedule's last run has ended.
async fn until_ended(schedule: &Schedule) {
    let handles: Vec<TaskHandle> = schedule
        .state()
        .last
        .iter()
        .map(|(_, handle, _)| handle.clone())
        .collect();
    for mut handle in handles {
        handle.ended().await;
    }
}

impl Schedule {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self) -> ScheduleInfo {
        let state = self.state();
        let config = &self.config;
        let last = state
            .last
            .iter()
            .find(|(_, handle, _)| !handle.is_ended())
            .or(state.last.first());
        // None once purged: it ended, how is no longer known.
        let last_state = last.and_then(|(worker, handle, _)| {
            worker.registry().get(handle.id).map(|info| info.state)
        });
        ScheduleInfo {
            name: config.name.clone(),
            plugin: config.plugin.clone(),
            factory: config.factory.clone(),
            when: config.when.to_string(),
            scope: config.scope,
            overlap: config.overlap,
            catch_up: config.catch_up,
            added: self.added,
            paused: state.paused,
            next: if state.paused { None } else { state.next },
            last_tick: state.last_tick,
            last_task: last.map(|(_, _, name)| name.clone()),
            last_state,
            runs: state.runs,
            misses: state.misses,
        }
    }
}

impl ScheduleControl for Scheduler {
    fn add_schedule(
        self: Arc<Self>,
        plugin: String,
        spec: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), GuestError>> + Send>> {
        Box::pin(async move {
            let spec: ScheduleSpec = serde_json::from_str(&spec).map_err(|e| {
                GuestError::InvalidArgs(format!("the schedule is not a spec as in app.toml: {e}"))
            })?;
            self.add(spec, &plugin).await.map_err(|e| match e {
                ScheduleError::Limit(limit) => GuestError::Limit(limit.to_string()),
                other => GuestError::InvalidArgs(other.to_string()),
            })
        })
    }

    fn remove_schedule(
        self: Arc<Self>,
        name: String,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>> {
        Box::pin(async move { self.remove(&name).await.map_err(|e| e.to_string()) })
    }
}
