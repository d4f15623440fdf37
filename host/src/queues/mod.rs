//! The app's queues (`[[queues]]`) at run time: their waiting tasks, what
//! of each runs, who starts next, and what an operator changed.
//!
//! A task submitted to a queue is registered at once (state `queued`: it
//! can be got, listed and cancelled, and keeps its name) but holds no
//! instance, nor a future: it takes a waiting place ([`Queue::enter`],
//! refused past `max_waiting` or while the queue drains) and leaves its
//! [`Start`] there, data the queue holds until the queue's
//! [`dispatch::Dispatch`] gives it its [`Turn`] under the queue's flow
//! control. Only then is the task spawned; it runs holding the turn until
//! it ends. In a queue that bounds nothing, with nobody waiting, the turn
//! is given as the task enters, without a place ([`Entered::Started`]). A task cancelled while it waits is taken out (the queue is
//! its signal's [`CancelHook`]). Every worker's tasks
//! share one dispatcher per queue, behind a mutex held only to push, pick
//! or end (no await under it). A timer task per queue polls it when a
//! delay or a rate comes due; a submission or a task's end polls it at
//! once.
//!
//! An operator may pause, drain or resume a queue and change its limits
//! at run time; [`Settings`] is what of that is kept across restarts (the
//! operations layer writes it to storage before it is applied).
//!
//! In a cluster the limits hold across its hosts: each host's dispatcher
//! orders its own waiting tasks under the queue's limits, and a task given
//! its turn then takes its share of the cluster's ([`Shared`], on
//! JetStream KV) before it runs, waiting (still `queued`) while the other
//! hosts hold the queue's or its key's slots or its rate is spent.

mod dispatch;

use crate::config::{DEFAULT_QUEUE, Limit, LimitUnit, LimitsChange, Placement, QueueConfig};
use crate::metrics::{QueueMetrics, queue_label};
use crate::task::{CancelHook, TaskId, WorkerId};
use dispatch::{Dispatch, Rules};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// How many keys `taskhost queues` shows per queue.
const TOP_KEYS: usize = 5;

/// Every queue of the app, by name.
pub(crate) struct Queues {
    by_name: HashMap<String, Arc<Queue>>,
    /// Names in app.toml's order, for error messages and listings.
    names: Vec<String>,
    /// Tasks waiting in any queue, kept as one count (every queue's places
    /// add to it) because each task start reads it.
    waiting: Arc<AtomicU64>,
    /// The queues' timer tasks, stopped with the queues.
    timers: Vec<tokio::task::AbortHandle>,
    /// Held while an operator's change is written and applied, so two
    /// changes of one queue do not interleave.
    changes: tokio::sync::Mutex<()>,
    /// The cluster's side of the limits, once the host joined one.
    shared: Arc<OnceLock<Arc<dyn Shared>>>,
}

/// A queue's limits as the other hosts of a cluster share them: set once,
/// when the host joins (`cluster::queues`), before any task runs.
pub(crate) trait Shared: Send + Sync {
    /// Waits until `config`'s `concurrency`, `per_key`, `rate` and
    /// `key_rate` let one more task of `key` (empty: none) start across
    /// every host, and holds its share of them until the returned value
    /// is dropped. Dropping the future before it is ready takes nothing.
    fn hold(
        &self,
        config: Arc<QueueConfig>,
        key: Arc<str>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Box<dyn Send + Sync>> + Send>>;
}

impl Queues {
    /// The queues app.toml lists (which always include `default`), each
    /// with its timer task on the current runtime.
    pub(crate) fn new(configs: &[QueueConfig], metrics: QueueMetrics) -> Queues {
        let mut queues = Queues {
            by_name: HashMap::new(),
            names: Vec::new(),
            waiting: Arc::default(),
            timers: Vec::new(),
            changes: tokio::sync::Mutex::new(()),
            shared: Arc::default(),
        };
        let default = QueueConfig::unbounded(DEFAULT_QUEUE);
        let listed = configs.iter().any(|config| config.name == DEFAULT_QUEUE);
        for config in configs.iter().chain((!listed).then_some(&default)) {
            let labels = queue_label(&config.name);
            let queue = Arc::new(Queue {
                name: config.name.as_str().into(),
                base: config.clone(),
                state: Mutex::new(State {
                    dispatch: Dispatch::new(rules(config), Instant::now()),
                    timer_at: None,
                    config: Arc::new(config.clone()),
                    settings: Settings::default(),
                    admitting: 0,
                    recent: Recent::default(),
                    throttled: 0,
                    blocked: 0,
                    early: HashMap::new(),
                }),
                shared: queues.shared.clone(),
                timer: Arc::new(Notify::new()),
                all_waiting: queues.waiting.clone(),
                made: Instant::now(),
                metrics: SeriesOf {
                    waiting: metrics.waiting.get_or_create(&labels).clone(),
                    running: metrics.running.get_or_create(&labels).clone(),
                    started: metrics.started.get_or_create(&labels).clone(),
                    throttled: metrics.throttled.get_or_create(&labels).clone(),
                    dead: metrics.dead.get_or_create(&labels).clone(),
                    wait_seconds: metrics.wait_seconds.get_or_create(&labels).clone(),
                },
            });
            queues.timers.push(
                tokio::spawn(timer(Arc::downgrade(&queue), queue.timer.clone())).abort_handle(),
            );
            queues.names.push(config.name.clone());
            queues.by_name.insert(config.name.clone(), queue);
        }
        queues
    }

    /// The queue `name`, or an error that lists the queues there are.
    pub(crate) fn get(&self, name: &str) -> Result<&Arc<Queue>, String> {
        self.by_name.get(name).ok_or_else(|| {
            format!(
                "no queue named `{name}` (queues: {}; app.toml's [[queues]] makes one)",
                self.names.join(", ")
            )
        })
    }

    /// Every queue, in app.toml's order (`default` last unless listed).
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.names.iter().map(|name| &self.by_name[name])
    }

    /// Tasks waiting in any queue: they hold no instance, so they do not
    /// count against `tasks_per_app`.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Held while one operator's change is written and applied (a
    /// setting, a dead letter retried or discarded).
    pub(crate) async fn changing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    /// Drops every waiting task's [`Start`], unrun: the host is dropped
    /// without the shutdown that cancels them, and each holds its worker,
    /// which holds the queues (a cycle no drop would break).
    pub(crate) fn clear(&self) {
        for queue in self.by_name.values() {
            let (removed, early) = {
                let mut state = queue.state();
                let removed = state.dispatch.remove_all(Instant::now());
                queue.metrics.waiting.set(state.waiting() as i64);
                (removed, std::mem::take(&mut state.early))
            };
            self.waiting
                .fetch_sub(removed.len() as u64, Ordering::AcqRel);
            drop(removed);
            // A turn kept for a place not yet filled holds its queue too.
            drop(early);
        }
    }

    /// Makes every queue's limits hold across a cluster, through `shared`
    /// (once; a second call changes nothing).
    pub(crate) fn share(&self, shared: Arc<dyn Shared>) {
        let _ = self.shared.set(shared);
    }
}

fn rules(config: &QueueConfig) -> Rules {
    Rules {
        concurrency: config.concurrency,
        per_key: config.per_key,
        rate: config.rate,
        key_rate: config.key_rate,
        ageing: config.ageing,
        cooling_keys: Some(config.max_waiting as usize),
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        for timer in &self.timers {
            timer.abort();
        }
    }
}

/// Polls `queue` whenever its dispatcher asked to be woken (a delay or a
/// rate comes due) or someone moved its wake earlier; ends with the queue.
async fn timer(queue: Weak<Queue>, wake: Arc<Notify>) {
    loop {
        let at = match queue.upgrade() {
            Some(queue) => queue.poll(true),
            None => return,
        };
        match at {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// What an operator set on a queue at run time, kept across restarts as
/// JSON: paused, draining, and the limits changed (added up until reset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// No task starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) paused: bool,
    /// No task is taken in; those waiting go on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) draining: bool,
    /// The limits changed, over app.toml's.
    #[serde(default, skip_serializing_if = "LimitsChange::is_empty")]
    pub(crate) limits: LimitsChange,
}

impl Settings {
    /// Whether it is app.toml's queue as written.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Settings::default()
    }
}

/// The task a waiting place belongs to: the answer to a `dedupe`
/// submission whose key already has one waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// Its worker.
    pub(crate) worker: WorkerId,
    /// Its id.
    pub(crate) id: TaskId,
}

/// How a task was placed in its queue, as resolved: its key, priority
/// and start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Its key, if it has one.
    pub(crate) key: Option<String>,
    /// Its priority as submitted.
    pub(crate) priority: i32,
    /// When it may start, if delayed.
    pub(crate) run_at: Option<SystemTime>,
}

/// What a waiting task is, held by its queue in place of a future: how it
/// runs once given its turn, or ends if it leaves before.
pub(crate) trait Start: Send {
    /// Runs the task, holding `turn` until it ends (spawns it: it must not
    /// block, and runs under no lock of the queue).
    fn start(self: Box<Self>, turn: Turn);
    /// The task left its queue before its turn (it was cancelled): ends it
    /// (as [`Start::start`], without blocking).
    fn withdraw(self: Box<Self>);
}

/// A task given its turn, to start once the queue's lock is released.
type Ready = (Box<dyn Start>, Turn);

/// One waiting task, as the dispatcher holds it.
struct Slot {
    owner: Owner,
    /// As submitted (its level in the dispatcher ages).
    priority: i32,
    /// None until [`Waiting::fill`] leaves it.
    start: Option<Box<dyn Start>>,
}

/// Starts per second over the last [`Recent::SECONDS`] whole seconds, one
/// count per second in a ring.
#[derive(Default)]
struct Recent {
    counts: [u32; Recent::SECONDS],
    /// The second (since the queue was made) of the newest count.
    newest: u64,
}

impl Recent {
    const SECONDS: usize = 10;

    fn advance(&mut self, second: u64) {
        let gap = second.saturating_sub(self.newest);
        for step in 1..=gap.min(Recent::SECONDS as u64) {
            self.counts[((self.newest + step) % Recent::SECONDS as u64) as usize] = 0;
        }
        self.newest = self.newest.max(second);
    }

    fn add(&mut self, second: u64, starts: u32) {
        self.advance(second);
        let slot = (second % Recent::SECONDS as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(starts);
    }

    /// Starts per second over the last whole seconds (the current one
    /// left out: it is not over).
    fn per_second(&mut self, second: u64) -> f64 {
        self.advance(second);
        let current = (second % Recent::SECONDS as u64) as usize;
        let total: u64 = self
            .counts
            .iter()
            .enumerate()
            .filter(|(slot, _)| *slot != current)
            .map(|(_, count)| u64::from(*count))
            .sum();
        total as f64 / (Recent::SECONDS - 1) as f64
    }
}

impl State {
    /// Tasks waiting: in the dispatcher, or given their turn and waiting
    /// for room on their worker.
    fn waiting(&self) -> u64 {
        self.dispatch.waiting() as u64 + self.admitting
    }

    /// Tasks holding a turn and admitted to their worker: running.
    fn running(&self) -> u64 {
        u64::from(self.dispatch.running()).saturating_sub(self.admitting)
    }
}

struct State {
    dispatch: Dispatch<Slot>,
    /// When the timer task will poll next; none: only when woken.
    timer_at: Option<Instant>,
    /// The queue as it is now: app.toml's, with the run-time limits.
    config: Arc<QueueConfig>,
    settings: Settings,
    /// Tasks given their turn that wait for room on their worker
    /// (`tasks_per_worker`): still waiting, for `max_waiting`, the
    /// listing and `tasks_per_app`, until [`Turn::admitted`].
    admitting: u64,
    recent: Recent,
    /// The dispatcher's throttled count the metric has seen.
    throttled: u64,
    /// Tasks given their turn here that wait for their share of the
    /// cluster's limits (counted in `admitting`).
    blocked: u64,
    /// Turns given to places not yet filled ([`Waiting::fill`] takes them
    /// up): a task's turn may come while it is still being registered.
    early: HashMap<u64, Turn>,
}

/// The series of one queue.
struct SeriesOf {
    waiting: prometheus_client::metrics::gauge::Gauge,
    running: prometheus_client::metrics::gauge::Gauge,
    started: prometheus_client::metrics::counter::Counter,
    throttled: prometheus_client::metrics::counter::Counter,
    dead: prometheus_client::metrics::counter::Counter,
    wait_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// One queue.
pub(crate) struct Queue {
    name: Arc<str>,
    /// The queue as app.toml has it: run-time limits apply over it.
    base: QueueConfig,
    state: Mutex<State>,
    /// Wakes the timer task: its wake moved earlier.
    timer: Arc<Notify>,
    /// [`Queues`]'s count of every queue's waiting tasks.
    all_waiting: Arc<AtomicU64>,
    /// When it was made: the origin of [`Recent`]'s seconds.
    made: Instant,
    metrics: SeriesOf,
    /// [`Queues`]'s shared limits.
    shared: Arc<OnceLock<Arc<dyn Shared>>>,
}

/// What [`Queue::enter`] did with a submission.
pub(crate) enum Entered {
    /// It has a place, to be filled with its [`Start`]. How it was placed
    /// is for its `queued` line, not kept while it waits.
    Waiting(Waiting, Placed),
    /// Its turn came as it entered: it starts now, with this turn.
    Started(Turn, Placed),
    /// A `dedupe` queue already has a task of its key waiting: that task is
    /// the answer, and nothing new waits.
    Existing(Owner),
}

/// Why [`Queue::enter`] refused a submission.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The queue holds `max_waiting` tasks.
    Full(Limit),
    /// The submission does not fit the queue (its key).
    Invalid(String),
    /// The queue is draining: it takes no new task.
    Draining(String),
}

/// A queue's state, for `taskhost queues` and `GET /v1/queues`.
#[derive(Debug, Clone)]
pub(crate) struct QueueStats {
    pub(crate) config: Arc<QueueConfig>,
    pub(crate) settings: Settings,
    pub(crate) waiting: u64,
    pub(crate) delayed: u64,
    pub(crate) running: u32,
    /// Of the waiting, those given their turn here that wait for the
    /// cluster's limits (the other hosts hold them).
    pub(crate) blocked: u64,
    pub(crate) started: u64,
    pub(crate) started_per_second: f64,
    pub(crate) throttled: u64,
    pub(crate) oldest_wait: Option<Duration>,
    /// Keys the queue remembers (waiting, running, or within a key rate).
    pub(crate) keys: u64,
    /// (key, waiting, running), most waiting first.
    pub(crate) top_keys: Vec<(String, u64, u32)>,
}

impl Queue {
    /// The queue's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("a queue's lock is never poisoned")
    }

    /// Takes a waiting place for the task `owner` with `args`, placed as
    /// `placement` says, or refuses it: past `max_waiting`, while the
    /// queue drains, or without the key the queue goes by. Where the turn
    /// is certain (the queue bounds nothing and nobody may start before
    /// it), gives the turn instead of a place.
    /// A task put back by a restart (`resumed`: it was taken before, and
    /// has waited since then) is neither deduplicated nor refused past
    /// `max_waiting` or while the queue drains: nothing taken is lost. Its
    /// wait goes on from then: its priority has aged meanwhile.
    pub(crate) fn enter(
        self: &Arc<Self>,
        placement: &Placement,
        args: &str,
        owner: Owner,
        resumed: Option<SystemTime>,
    ) -> Result<Entered, Refused> {
        let waited = resumed.map(|since| {
            let since = run_at_or(placement, since);
            Instant::now()
                .checked_sub(SystemTime::now().duration_since(since).unwrap_or_default())
                .unwrap_or_else(Instant::now)
        });
        let resumed = resumed.is_some();
        let run_at = placement.start.map(|start| start.resolve());
        let due = run_at
            .map(|at| Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default());
        let (ticket, key) = {
            let mut state = self.state();
            let key = match self.base.key_arg {
                // Nothing to parse: read under the lock.
                None => key_under(&state.config, placement, args)?,
                // Read from the arguments outside the lock, under the
                // queue's config of that moment; a limits change landing
                // meanwhile makes it read again under the new one.
                Some(_) => loop {
                    let config = state.config.clone();
                    drop(state);
                    let key = key_under(&config, placement, args)?;
                    state = self.state();
                    if Arc::ptr_eq(&config, &state.config) {
                        break key;
                    }
                },
            };
            if state.settings.draining && !resumed {
                return Err(Refused::Draining(format!(
                    "queue `{}` is draining: it takes no new task until `taskhost queue resume \
                     {}`",
                    self.name, self.name
                )));
            }
            if state.config.dedupe
                && !resumed
                && let Some(slot) = state.dispatch.waiting_of(&key)
            {
                return Ok(Entered::Existing(slot.owner.clone()));
            }
            let max_waiting = state.config.max_waiting;
            if state.waiting() >= max_waiting && !resumed {
                return Err(Refused::Full(Limit {
                    what: format!(
                        "the waiting tasks of queue `{}` ([[queues]] max_waiting)",
                        self.name
                    ),
                    max: max_waiting,
                    got: max_waiting + 1,
                    unit: LimitUnit::Tasks,
                    setting: None,
                }));
            }
            self.all_waiting.fetch_add(1, Ordering::AcqRel);
            // A queue that bounds nothing and has nobody waiting gives the
            // turn as the task enters, without a place: counted as a start
            // of no wait, and as waiting for room on its worker (as any
            // task given its turn) until admitted.
            if !resumed
                && due.is_none()
                && let Some(key_of_turn) = state.dispatch.start_at_once(&key)
            {
                let second = Instant::now().duration_since(self.made).as_secs();
                state.recent.add(second, 1);
                state.admitting += 1;
                self.metrics.started.inc();
                self.metrics.wait_seconds.observe(0.0);
                self.metrics.waiting.set(state.waiting() as i64);
                self.metrics.running.set(state.running() as i64);
                let turn = Turn {
                    queue: self.clone(),
                    key: key_of_turn,
                    priority: placement.priority,
                    admitting: true,
                    shared: None,
                };
                let placed = Placed {
                    key: (!key.is_empty()).then_some(key),
                    priority: placement.priority,
                    run_at,
                };
                return Ok(Entered::Started(turn, placed));
            }
            let slot = Slot {
                owner,
                priority: placement.priority,
                start: None,
            };
            let ticket = state.dispatch.push_waited(
                &key,
                placement.priority,
                due,
                waited,
                slot,
                Instant::now(),
            );
            self.metrics.waiting.set(state.waiting() as i64);
            (ticket, key)
        };
        // Not polled until the place is filled: a turn given before is
        // kept for it (`early`).
        Ok(Entered::Waiting(
            Waiting {
                queue: self.clone(),
                ticket,
                filled: false,
            },
            Placed {
                key: (!key.is_empty()).then_some(key),
                priority: placement.priority,
                run_at,
            },
        ))
    }

    /// Whether a task placed as `placement` would get its turn as soon as
    /// it enters, for this moment only: the task is not delayed, and its
    /// dispatcher would start it at once ([`Dispatch::starts_at_once`]:
    /// the rule [`Queue::enter`] applies). A queue with limits is not
    /// asked further (its slots may be the cluster's).
    pub(crate) fn starts_at_once(&self, placement: &Placement) -> bool {
        placement.start.is_none() && self.state().dispatch.starts_at_once()
    }

    /// Starts what the dispatcher lets start now, and returns when it
    /// asks to be polled again. A poll that is not the timer's wakes the
    /// timer if the next wake moved earlier.
    fn poll(self: &Arc<Self>, from_timer: bool) -> Option<Instant> {
        let (start, wake) = self.poll_locked(&mut self.state(), from_timer);
        for (task, turn) in start {
            task.start(turn);
        }
        wake
    }

    /// [`Queue::poll`]'s part under the lock: the tasks to start once it
    /// is released, with their turns, and when to poll next.
    fn poll_locked(
        self: &Arc<Self>,
        state: &mut State,
        from_timer: bool,
    ) -> (Vec<Ready>, Option<Instant>) {
        let now = Instant::now();
        let mut start = Vec::new();
        let polled = state.dispatch.poll(now);
        let earlier = match (polled.wake, state.timer_at) {
            (Some(wake), Some(at)) => wake < at,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if from_timer {
            state.timer_at = polled.wake;
        } else if earlier {
            state.timer_at = polled.wake;
            self.timer.notify_one();
        }
        if !polled.start.is_empty() {
            let count = polled.start.len();
            let second = now.duration_since(self.made).as_secs();
            state.recent.add(second, count as u32);
            self.metrics.started.inc_by(count as u64);
        }
        let throttled = state.dispatch.throttled();
        if throttled > state.throttled {
            self.metrics.throttled.inc_by(throttled - state.throttled);
            state.throttled = throttled;
        }
        state.admitting += polled.start.len() as u64;
        self.metrics.waiting.set(state.waiting() as i64);
        self.metrics.running.set(state.running() as i64);
        for started in polled.start {
            self.metrics
                .wait_seconds
                .observe(started.waited.as_secs_f64());
            let turn = Turn {
                queue: self.clone(),
                key: started.key,
                priority: started.item.priority,
                admitting: true,
                shared: None,
            };
            match started.item.start {
                Some(task) => start.push((task, turn)),
                None => {
                    state.early.insert(started.ticket, turn);
                }
            }
        }
        (start, polled.wake)
    }

    /// The queue as it is now: app.toml's, with the run-time limits.
    pub(crate) fn config(&self) -> Arc<QueueConfig> {
        self.state().config.clone()
    }

    /// What it holds and did, now.
    pub(crate) fn stats(&self) -> QueueStats {
        let now = Instant::now();
        let mut state = self.state();
        let second = now.duration_since(self.made).as_secs();
        QueueStats {
            config: state.config.clone(),
            settings: state.settings.clone(),
            waiting: state.waiting(),
            delayed: state.dispatch.delayed() as u64,
            running: state.running() as u32,
            blocked: state.blocked,
            started: self.metrics.started.get(),
            started_per_second: state.recent.per_second(second),
            throttled: state.dispatch.throttled(),
            oldest_wait: state.dispatch.oldest_wait(now),
            keys: state.dispatch.keys() as u64,
            top_keys: state
                .dispatch
                .top_keys(TOP_KEYS + 1)
                .into_iter()
                .filter(|load| !load.key.is_empty())
                .take(TOP_KEYS)
                .map(|load| (load.key.to_string(), load.waiting as u64, load.running))
                .collect(),
        }
    }

    /// The settings it would have after `change`, checked: an error names
    /// the field. Nothing changes until [`Queue::apply`].
    pub(crate) fn planned(&self, change: impl FnOnce(&mut Settings)) -> Result<Settings, String> {
        let mut settings = self.state().settings.clone();
        change(&mut settings);
        settings.limits.applied(&self.base)?;
        Ok(settings)
    }

    /// Makes `settings` the queue's (checked by [`Queue::planned`], or read
    /// back from storage at start); a bad one is refused, naming the field.
    pub(crate) fn apply(self: &Arc<Self>, settings: Settings) -> Result<(), String> {
        let config = settings.limits.applied(&self.base)?;
        {
            let mut state = self.state();
            state.dispatch.set_rules(rules(&config), Instant::now());
            state.dispatch.set_paused(settings.paused);
            state.config = Arc::new(config);
            state.settings = settings;
        }
        self.poll(false);
        Ok(())
    }

    /// Applies settings as storage kept them (JSON; none: app.toml's
    /// queue as written). Unreadable ones are refused; limits this queue
    /// no longer takes (app.toml changed) are left out, its pause and
    /// drain still applied, and the error says so.
    pub(crate) fn apply_stored(self: &Arc<Self>, json: Option<&str>) -> Result<(), String> {
        let settings = match json {
            Some(json) => serde_json::from_str::<Settings>(json)
                .map_err(|error| format!("unreadable ({error})"))?,
            None => Settings::default(),
        };
        self.apply(settings.clone()).or_else(|why| {
            let kept = Settings {
                limits: Default::default(),
                ..settings
            };
            self.apply(kept)?;
            Err(format!("its limits ({why}); its pause and drain are kept"))
        })
    }

    /// The settings an operator made, as they are now.
    pub(crate) fn settings(&self) -> Settings {
        self.state().settings.clone()
    }

    /// Takes the waiting task `ticket` out of the dispatcher and the
    /// counts, if it still waits there.
    fn take_out(&self, state: &mut State, ticket: u64) -> Option<Slot> {
        let removed = state.dispatch.remove(ticket, Instant::now());
        if removed.is_some() {
            self.all_waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.waiting.set(state.waiting() as i64);
        }
        removed
    }

    /// A task given its turn has room on its worker.
    fn leave_admitting(&self) {
        let mut state = self.state();
        state.admitting -= 1;
        self.metrics.waiting.set(state.waiting() as i64);
        self.metrics.running.set(state.running() as i64);
        drop(state);
        self.all_waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a task of the queue kept as a dead letter.
    pub(crate) fn count_dead(&self) {
        self.metrics.dead.inc();
    }
}

/// Since when a task submitted at `submitted` and placed as `placement`
/// may start: its delay's end, if later.
fn run_at_or(placement: &Placement, submitted: SystemTime) -> SystemTime {
    match placement.start.map(|start| start.resolve()) {
        Some(at) if at > submitted => at,
        _ => submitted,
    }
}

/// The key a task with `args` waits under in a queue of `config` (empty:
/// none), or why the queue refuses it.
fn key_under(config: &QueueConfig, placement: &Placement, args: &str) -> Result<String, Refused> {
    Ok(
        crate::config::key_of(config, placement.key.as_deref(), args)
            .map_err(Refused::Invalid)?
            .unwrap_or_default(),
    )
}

/// A task's place in its queue, taken by [`Queue::enter`] and filled by
/// [`Waiting::fill`]; given back if dropped unfilled (the task was refused
/// on the way).
pub(crate) struct Waiting {
    queue: Arc<Queue>,
    ticket: u64,
    filled: bool,
}

impl Waiting {
    /// Leaves the task's [`Start`] in its place: the queue runs it at its
    /// turn (now, if the turn came already). Returns its ticket if it
    /// still waits, for its queue to take it out again if it is cancelled
    /// before ([`CancelHook`]); none if it was started (or ended) here.
    pub(crate) fn fill(mut self, task: Box<dyn Start>) -> Option<u64> {
        self.filled = true;
        let queue = self.queue.clone();
        let ticket = self.ticket;
        let (start, early, waits) = {
            let mut state = queue.state();
            match state.dispatch.item_mut(ticket) {
                Some(slot) => {
                    slot.start = Some(task);
                    let start = queue.poll_locked(&mut state, false).0;
                    let waits = state.dispatch.item_mut(ticket).is_some();
                    (start, None, waits)
                }
                None => (Vec::new(), Some((task, state.early.remove(&ticket))), false),
            }
        };
        for (task, turn) in start {
            task.start(turn);
        }
        match early {
            Some((task, Some(turn))) => task.start(turn),
            // Neither waiting nor started: taken out unfilled, which only
            // a cancel does.
            Some((task, None)) => task.withdraw(),
            None => {}
        }
        waits.then_some(ticket)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.filled {
            return;
        }
        let (removed, early) = {
            let mut state = self.queue.state();
            let removed = self.queue.take_out(&mut state, self.ticket);
            (removed, state.early.remove(&self.ticket))
        };
        // A turn given meanwhile ends here, outside the lock.
        drop((removed, early));
    }
}

/// How a waiting task leaves its queue before its turn.
impl CancelHook for Queue {
    /// Takes the task out of its queue and ends it ([`Start::withdraw`]),
    /// if it still waits; once given its turn it is the running task's to
    /// end, and this does nothing.
    fn cancelled(&self, ticket: u64) {
        let removed = self.take_out(&mut self.state(), ticket);
        if let Some(task) = removed.and_then(|slot| slot.start) {
            task.withdraw();
        }
    }
}

/// Counts a task as waiting for the cluster's limits while it lives.
struct Blocked<'a>(&'a Queue);

impl<'a> Blocked<'a> {
    fn count(queue: &'a Queue) -> Blocked<'a> {
        queue.state().blocked += 1;
        Blocked(queue)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.state().blocked -= 1;
    }
}

/// A running task's share of its queue's bounds, given back when the task
/// has ended.
pub(crate) struct Turn {
    queue: Arc<Queue>,
    key: Arc<str>,
    /// Its priority as submitted.
    priority: i32,
    /// Given, not yet admitted to its worker: the task still counts as
    /// waiting.
    admitting: bool,
    /// Its share of the cluster's limits, given back when dropped.
    shared: Option<Box<dyn Send + Sync>>,
}

impl Turn {
    /// In a cluster, waits for the task's share of the cluster's limits
    /// too (counted as held by the cluster meanwhile), and holds it with
    /// the turn. Dropped before it is ready, it takes nothing.
    pub(crate) async fn share(&mut self) {
        let Some(shared) = self.queue.shared.get() else {
            return;
        };
        let config = self.queue.config();
        if config.limits_starts() {
            let _blocked = Blocked::count(&self.queue);
            self.shared = Some(shared.hold(config, self.key.clone()).await);
        }
    }

    /// The task has room on its worker: from now on it counts as running,
    /// not waiting.
    pub(crate) fn admitted(&mut self) {
        if std::mem::take(&mut self.admitting) {
            self.queue.leave_admitting();
        }
    }

    /// The queue it is a turn of.
    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// The task's key, if it has one.
    pub(crate) fn key(&self) -> Option<&str> {
        (!self.key.is_empty()).then_some(&*self.key)
    }

    /// The task's priority as submitted.
    pub(crate) fn priority(&self) -> i32 {
        self.priority
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Cancelled while it waited for room on its worker.
        self.admitted();
        let (start, _) = {
            let mut state = self.queue.state();
            state.dispatch.finished(&self.key, Instant::now());
            self.queue.poll_locked(&mut state, false)
        };
        for (task, turn) in start {
            task.start(turn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(concurrency: Option<u32>, max_waiting: u64) -> Queues {
        Queues::new(
            &[QueueConfig {
                concurrency,
                max_waiting,
                ..QueueConfig::unbounded("q")
            }],
            QueueMetrics::default(),
        )
    }

    fn placement() -> Placement {
        Placement {
            queue: "q".into(),
            key: None,
            priority: 0,
            start: None,
        }
    }

    fn owner(id: u64) -> Owner {
        Owner {
            worker: WorkerId::Index(0),
            id,
        }
    }

    /// A task that hands its turn over a channel.
    struct Told(tokio::sync::oneshot::Sender<Turn>);

    impl Start for Told {
        fn start(self: Box<Self>, turn: Turn) {
            let _ = self.0.send(turn);
        }

        fn withdraw(self: Box<Self>) {}
    }

    /// A filled place: its turn comes on the receiver; its ticket is how
    /// it leaves its queue (as a cancel would, [`CancelHook`]).
    fn wait(waiting: Waiting) -> (tokio::sync::oneshot::Receiver<Turn>, u64) {
        let (send, receive) = tokio::sync::oneshot::channel();
        let ticket = waiting.ticket;
        waiting.fill(Box::new(Told(send)));
        (receive, ticket)
    }

    /// Its turn, or a failure (not a hang) if it never comes.
    async fn turn(waiting: Waiting) -> Turn {
        tokio::time::timeout(std::time::Duration::from_secs(30), wait(waiting).0)
            .await
            .expect("a turn within 30 s")
            .expect("a turn")
    }

    fn enter(queue: &Arc<Queue>, id: u64) -> Waiting {
        match queue.enter(&placement(), "null", owner(id), None) {
            Ok(Entered::Waiting(waiting, _)) => waiting,
            _ => panic!("task {id} was not given a place"),
        }
    }

    #[tokio::test]
    async fn waiting_places_are_bounded_and_given_back() {
        let queues = queues(Some(1), 2);
        let queue = queues.get("q").unwrap();
        let mut running = turn(enter(queue, 0)).await;
        // Given its turn, a task waits until its worker has room: until
        // then it still counts against max_waiting.
        assert_eq!(queues.waiting(), 1);
        running.admitted();
        assert_eq!(queues.waiting(), 0);
        let (_first, first) = wait(enter(queue, 1));
        let _second = wait(enter(queue, 2));
        let Err(Refused::Full(refused)) = queue.enter(&placement(), "null", owner(3), None) else {
            panic!("a third waiting place past max_waiting 2");
        };
        assert_eq!(refused.max, 2);
        assert!(refused.what.contains("queue `q`"), "{}", refused.what);
        assert_eq!(queues.waiting(), 2);
        queue.cancelled(first);
        assert_eq!(queues.waiting(), 1);
        // A place dropped unfilled (its task refused on the way) is given
        // back too.
        drop(enter(queue, 4));
        assert_eq!(queues.waiting(), 1);
        assert!(
            queues
                .get("nope")
                .err()
                .unwrap()
                .contains("queues: q, default")
        );
    }

    #[tokio::test]
    async fn a_turn_given_before_the_place_is_filled_waits_for_it() {
        let queues = queues(Some(1), 10);
        let queue = queues.get("q").unwrap();
        // Another task's end polls the queue while this one is still
        // being registered: its turn is kept, and taken up by the fill.
        let early = enter(queue, 0);
        queue.poll(false);
        assert_eq!(queue.stats().running, 0, "given its turn, not admitted");
        let first = turn(early).await;
        drop(first);
        // Dropped unfilled with its turn given: the slot comes back.
        let refused = enter(queue, 1);
        queue.poll(false);
        drop(refused);
        assert_eq!(queues.waiting(), 0);
        let _third = turn(enter(queue, 2)).await;
    }

    #[tokio::test]
    async fn turns_are_bounded_by_concurrency_in_arrival_order() {
        let queues = queues(Some(1), 10);
        let queue = queues.get("q").unwrap();
        let first = turn(enter(queue, 0)).await;
        let (mut second, _leave) = wait(enter(queue, 1));
        tokio::task::yield_now().await;
        assert!(
            second.try_recv().is_err(),
            "no second turn while the first runs"
        );
        drop(first);
        second.await.unwrap();
    }

    #[tokio::test]
    async fn a_dedupe_queue_answers_with_the_waiting_task_of_the_key() {
        let queues = Queues::new(
            &[QueueConfig {
                concurrency: Some(1),
                dedupe: true,
                ..QueueConfig::unbounded("q")
            }],
            QueueMetrics::default(),
        );
        let queue = queues.get("q").unwrap();
        let keyed = Placement {
            key: Some("acme".into()),
            ..placement()
        };
        let enter = |id| queue.enter(&keyed, "null", owner(id), None);
        let Ok(Entered::Waiting(running, _)) = enter(0) else {
            panic!("the first of a key waits");
        };
        let _turn = turn(running).await;
        // The first one runs: a second waits.
        let Ok(Entered::Waiting(second, _)) = enter(1) else {
            panic!("a key with none waiting takes a new task");
        };
        let _second = wait(second);
        let Ok(Entered::Existing(existing)) = enter(2) else {
            panic!("a key with one waiting answers with it");
        };
        assert_eq!(existing, owner(1));
        let Err(Refused::Invalid(why)) = queue.enter(&placement(), "null", owner(3), None) else {
            panic!("a dedupe queue needs a key");
        };
        assert!(why.contains("`dedupe`"), "{why}");
    }

    #[tokio::test]
    async fn a_delayed_task_gets_its_turn_from_the_timer() {
        let queues = queues(None, 10);
        let queue = queues.get("q").unwrap();
        let delayed = Placement {
            start: Some(crate::config::StartAt::After(
                std::time::Duration::from_millis(50),
            )),
            ..placement()
        };
        let Ok(Entered::Waiting(waiting, _)) = queue.enter(&delayed, "null", owner(0), None) else {
            panic!("a delayed task waits");
        };
        let started = Instant::now();
        turn(waiting).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
    }
}
