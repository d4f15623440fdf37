//! Every operation a caller may perform on a running host, typed: submit,
//! get, list, cancel and purge tasks, dispatch events, steer schedules,
//! read and write key-value state, load plugins, and the same across the
//! hosts of a cluster. The control API's handlers, the CLI (through the
//! API), guests' `start-task-on` and the cluster's requests all come here,
//! with the requests and answers of [`types`], and fail with one
//! [`OpError`] whose kind maps once to an HTTP status, a CLI exit code and
//! a guest's error.
//!
//! Placement is part of a [`Submission`]: a worker of this host (`worker`,
//! `all_workers`), or a host of the cluster (`host`: a name, `any` or
//! `all`), which answers with this same module. Every task start ends in
//! the worker's `add_task` (`Host::add_task`), the one function the
//! listener, the scheduler and guests' `add-task` call as well.

pub mod types;

mod cluster;

use crate::host::{CancelError, Host};
use crate::plugin::LoadError;
use crate::scheduler::{ScheduleError, Scheduler};
use crate::storage::{BucketId, KvStore};
use crate::task::{TaskView, WorkerId};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::sync::Arc;
use std::time::Duration;
use types::{
    BuildState, CancelRequest, DispatchRequest, FactoryView, Health, KeysQuery, KvBucketView,
    KvEntry, KvKeys, KvPut, KvWritten, LoadRequest, Loaded, LogLineView, LogsQuery, MemoryImage,
    NameScope, PluginView, Purged, QueueAction, QueueView, ScheduleAction, ScheduleView,
    SubmittedTask, TaskFilter, TaskLogs, Triggered, WaitRequest, Woken,
};
pub use types::{DeadLetters, DeadQuery};
pub use types::{ErrorKind, OpError, Submission, Submitted};

/// Most keys one page of a bucket's keys holds.
const MAX_KEYS_PER_PAGE: usize = 10_000;

/// How long a cancel or a `wait_for` dispatch waits by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The longest a `wait` may wait: a request held open holds a connection.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The operations of one running host.
pub struct Operations {
    host: Arc<Host>,
}

impl Operations {
    /// The operations on `host`: what the control API and the cluster's
    /// requests call.
    pub fn new(host: Arc<Host>) -> Arc<Operations> {
        Arc::new(Operations { host })
    }

    /// The host the operations act on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Starts the tasks `submission` asks for, where it places them.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, OpError> {
        match submission.host.clone() {
            Some(target) => self.submit_on_hosts(&target, submission).await,
            None => self.submit_here(submission).await,
        }
    }

    /// A submission placed on this host's workers.
    async fn submit_here(&self, submission: Submission) -> Result<Submitted, OpError> {
        let host = &self.host;
        let workers: Vec<WorkerId> = if submission.all_workers {
            if submission.worker.is_some() {
                return Err(OpError::bad_request(
                    "give `worker` or `all_workers`, not both",
                ));
            }
            host.workers()
                .map(|w| w.id())
                .filter(|w| *w != WorkerId::Main)
                .collect()
        } else {
            vec![submission.worker.unwrap_or(WorkerId::Index(0))]
        };
        if submission.idempotency_key.is_some() && workers.len() > 1 {
            return Err(OpError::bad_request(
                "an idempotency key names one task: give `worker`, not `all_workers`",
            ));
        }
        let spec = submission.spec()?;
        let claim = match submission.scope {
            NameScope::Worker => None,
            NameScope::Cluster => {
                let Some(cluster) = host.cluster() else {
                    return Err(OpError::bad_request(
                        "`scope = cluster` is for a host in a cluster, and this one has no \
                         [cluster]",
                    ));
                };
                let Some(name) = &submission.name else {
                    return Err(OpError::bad_request(
                        "`scope = cluster` makes a name unique across the cluster: give `name`",
                    ));
                };
                if workers.len() != 1 {
                    return Err(OpError::bad_request(
                        "a cluster-scoped name is one task: give `worker`, not `all_workers`",
                    ));
                }
                cluster
                    .names()
                    .claim(name, workers[0])
                    .await
                    .map_err(|error| match error {
                        crate::cluster::names::ClaimError::Taken { .. } => {
                            OpError::new(ErrorKind::DuplicateName, error.to_string())
                        }
                        crate::cluster::names::ClaimError::Unreachable(_) => {
                            OpError::new(ErrorKind::NoHost, error.to_string())
                        }
                    })?;
                Some((cluster.names(), name.clone()))
            }
        };
        let mut tasks = Vec::new();
        for worker in workers {
            let added = match host
                .add_task(worker, &submission.plugin, spec.clone())
                .await
            {
                Ok(added) => added,
                Err(error) => {
                    if let Some((names, name)) = &claim {
                        names.release(name).await;
                    }
                    return Err(error.into());
                }
            };
            if let Some((names, name)) = &claim {
                names.bind(name, added.worker, added.id).await;
            }
            tasks.push(SubmittedTask {
                worker: added.worker,
                id: added.id,
                name: added.name,
                created: added.created,
                host: None,
            });
        }
        Ok(Submitted { tasks })
    }

    /// A submission with a `host`: sent to that host (or `any`, or `all`)
    /// of the cluster, which answers as it would here; each task says
    /// where it runs.
    async fn submit_on_hosts(
        &self,
        target: &str,
        mut submission: Submission,
    ) -> Result<Submitted, OpError> {
        let Some(cluster) = self.host.cluster() else {
            return Err(OpError::bad_request(
                "`host` is for a host in a cluster, and this one has no [cluster]: drop `host`",
            ));
        };
        let target: crate::cluster::Target = target
            .parse()
            .map_err(|message: String| OpError::bad_request(message))?;
        submission.host = None;
        let payload = serde_json::to_vec(&submission).unwrap_or_default();
        let answers = cluster
            .request(crate::cluster::Kind::Submissions, &target, payload.into())
            .await
            .map_err(cluster::request_error)?;
        let mut submitted = Submitted { tasks: Vec::new() };
        let mut failed: Vec<(String, OpError)> = Vec::new();
        for answer in answers {
            if !(200..300).contains(&answer.status) {
                failed.push((answer.host, OpError::of_answer(answer.status, &answer.body)));
                continue;
            }
            match serde_json::from_slice::<Submitted>(&answer.body) {
                Ok(mut theirs) => {
                    for task in &mut theirs.tasks {
                        task.host = Some(answer.host.clone());
                    }
                    submitted.tasks.extend(theirs.tasks);
                }
                Err(error) => failed.push((
                    answer.host,
                    OpError::new(
                        ErrorKind::Internal,
                        format!("an answer that does not parse: {error}"),
                    ),
                )),
            }
        }
        if failed.is_empty() {
            return Ok(submitted);
        }
        let mut error = cluster::joined_error(&failed);
        let started: Vec<String> = submitted
            .tasks
            .iter()
            .map(|t| format!("{} (task {})", t.host.as_deref().unwrap_or("?"), t.id))
            .collect();
        if !started.is_empty() {
            error.message = format!("{}; started on {}", error.message, started.join(", "));
        }
        Err(error)
    }

    /// This host's last plugin loads and refusals, newest first.
    pub fn loads(&self) -> Vec<crate::host::LoadRecord> {
        self.host.loads()
    }

    /// This host's tasks counted: by state, failed in the last hour, done
    /// in the last minute.
    pub fn summary(&self) -> types::TaskSummary {
        use crate::task::TaskState;
        let now = std::time::SystemTime::now();
        let since = |age: u64| now.checked_sub(std::time::Duration::from_secs(age));
        let (hour, minute) = (since(3600), since(60));
        let mut summary = types::TaskSummary::default();
        let mut counts = [0usize; 6];
        let states = [
            TaskState::Queued,
            TaskState::Pending,
            TaskState::Running,
            TaskState::Done,
            TaskState::Failed,
            TaskState::Cancelled,
        ];
        // Counted in place: no task is copied.
        for worker in self.host.workers() {
            worker.registry().visit(|task| {
                if let Some(i) = states.iter().position(|s| *s == task.state) {
                    counts[i] += 1;
                }
                let ended_after = |at: Option<std::time::SystemTime>| {
                    task.ended_at.zip(at).is_some_and(|(ended, at)| ended >= at)
                };
                match task.state {
                    TaskState::Failed if ended_after(hour) => summary.failed_last_hour += 1,
                    TaskState::Done if ended_after(minute) => summary.done_last_minute += 1,
                    _ => {}
                }
            });
        }
        for (state, count) in states.iter().zip(counts) {
            summary.states.insert(state.as_str().to_string(), count);
        }
        summary
    }

    /// The tasks of this host that `filter` selects.
    pub fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>, OpError> {
        const MOST_TASKS: usize = 10_000;
        let worker = filter.worker.as_deref().map(parse_worker).transpose()?;
        if let Some(limit) = filter.limit
            && !(1..=MOST_TASKS).contains(&limit)
        {
            return Err(OpError::bad_request(format!(
                "limit must be between 1 and {MOST_TASKS}, not {limit}"
            )));
        }
        if filter.before.is_some() && filter.limit.is_none() {
            return Err(OpError::bad_request("`before` pages: it needs `limit`"));
        }
        if let Some(host) = &filter.host {
            let Some(cluster) = self.host.cluster() else {
                return Err(OpError::bad_request(
                    "`host` picks a host of a cluster, and this host has no [cluster]: drop `host`",
                ));
            };
            if cluster.config().host != *host {
                return Ok(Vec::new());
            }
        }
        let keep = |t: &crate::task::TaskInfo| {
            filter.before.is_none_or(|before| t.ident.id < before)
                && worker.is_none_or(|w| t.ident.worker == w)
                && filter.state.is_none_or(|s| t.state == s)
                && (filter.plugin.as_deref()).is_none_or(|p| &*t.ident.plugin == p)
                && (filter.name.as_deref()).is_none_or(|n| t.ident.name.as_deref() == Some(n))
                && (filter.factory.as_deref()).is_none_or(|f| t.ident.factory == f)
                && (filter.queue.as_deref()).is_none_or(|q| t.ident.queue.as_deref() == Some(q))
                && filter.parent.is_none_or(|p| t.ident.parent == Some(p))
        };
        Ok(self
            .host
            .select_tasks(keep, filter.limit)
            .iter()
            .map(TaskView::from)
            .collect())
    }

    /// One task, by its id (as text: a path segment).
    pub fn task(&self, id: &str) -> Result<TaskView, OpError> {
        let id: u64 = id
            .parse()
            .map_err(|_| OpError::bad_request(format!("task id must be a number, not {id:?}")))?;
        self.host
            .workers()
            .find_map(|w| w.registry().get(id))
            .map(|t| TaskView::from(&t))
            .ok_or_else(|| OpError::new(ErrorKind::NotFound, format!("no task {id}")))
    }

    /// A resuming task's journal: its steps, without their answers.
    pub async fn task_journal(&self, id: &str) -> Result<types::TaskJournal, OpError> {
        let view = self.task(id)?;
        let task = self
            .host
            .workers()
            .find_map(|w| w.registry().get(view.id))
            .ok_or_else(|| OpError::new(ErrorKind::NotFound, format!("no task {id}")))?;
        let Some(seq) = task.ident.durable else {
            return Err(OpError::new(
                ErrorKind::NotFound,
                format!(
                    "task {id} keeps no journal: it is not durable (only a task started with \
                     durable = \"resume\" has one)"
                ),
            ));
        };
        let steps = self
            .host
            .storage()
            .tasks()
            .steps(seq)
            .await
            .map_err(|e| OpError::new(ErrorKind::Storage, format!("task {id}: {e:#}")))?;
        Ok(types::TaskJournal {
            task: view.id,
            bytes: steps.iter().map(|s| s.size() as u64).sum(),
            steps: steps
                .into_iter()
                .map(|step| types::JournalStepView {
                    index: step.index,
                    bytes: step.outcome.len() as u64,
                    call: step.call,
                    at_ms: step.at_ms,
                    micros: step.micros,
                })
                .collect(),
        })
    }

    /// A task's kept log lines after `query.after`; with `wait_ms`, waits
    /// that long for a first one while the task runs.
    pub async fn task_logs(&self, id: &str, query: &LogsQuery) -> Result<TaskLogs, OpError> {
        const MOST_LINES: usize = 10_000;
        const LONGEST_WAIT: Duration = Duration::from_secs(30);
        let id: u64 = id
            .parse()
            .map_err(|_| OpError::bad_request(format!("task id must be a number, not {id:?}")))?;
        let limit = query.limit.unwrap_or(1_000);
        if !(1..=MOST_LINES).contains(&limit) {
            return Err(OpError::bad_request(format!(
                "limit must be between 1 and {MOST_LINES}, not {limit}"
            )));
        }
        let after = query.after.unwrap_or(0);
        let find = || {
            self.host
                .workers()
                .find_map(|w| w.registry().log(id))
                .ok_or_else(|| OpError::new(ErrorKind::NotFound, format!("no task {id}")))
        };
        let (mut log, signal) = find()?;
        if let Some(wait_ms) = query.wait_ms
            && signal.end_state().is_none()
            && log
                .as_ref()
                .is_none_or(|log| log.page(after, 1).lines.is_empty())
        {
            let wait = Duration::from_millis(wait_ms).min(LONGEST_WAIT);
            let book = self.host.log_book();
            // The task's log is made here if it has none yet, so its first
            // line wakes this wait.
            let waited = signal.log(book).clone();
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    () = waited.added_after(after) => {}
                    () = signal.ended() => {}
                }
            })
            .await;
            log = Some(waited);
        }
        let ended = signal.end_state().is_some();
        let page = log.map(|log| log.page(after, limit));
        Ok(match page {
            Some(page) => TaskLogs {
                task: id,
                lines: page
                    .lines
                    .into_iter()
                    .map(|line| LogLineView {
                        seq: line.seq,
                        at_ms: line.at_ms,
                        level: line.level.to_string(),
                        message: line.message,
                    })
                    .collect(),
                last: page.last,
                dropped: page.dropped,
                ended,
            },
            None => TaskLogs {
                task: id,
                lines: Vec::new(),
                last: 0,
                dropped: 0,
                ended,
            },
        })
    }

    /// Cancels the tasks named `request.name` (on one worker or all) and
    /// waits until they ended.
    pub async fn cancel(&self, request: CancelRequest) -> Result<Vec<TaskView>, OpError> {
        let host = &self.host;
        let workers: Vec<WorkerId> = match &request.worker {
            Some(worker) => vec![*worker],
            None => host
                .workers()
                .filter(|w| w.registry().handle_by_name(&request.name).is_some())
                .map(|w| w.id())
                .collect(),
        };
        if workers.is_empty() {
            return Err(OpError::new(
                ErrorKind::NotFound,
                format!("no task named `{}`", request.name),
            ));
        }
        let timeout = request
            .timeout_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis);
        let cancels = workers.iter().map(|w| host.cancel_task(*w, &request.name));
        let ended = tokio::time::timeout(timeout, futures_util::future::join_all(cancels))
            .await
            .map_err(|_| {
                OpError::new(
                    ErrorKind::Timeout,
                    format!("`{}` had not ended after {timeout:?}", request.name),
                )
            })?;
        ended
            .into_iter()
            .map(|result| match result {
                Ok(info) => Ok(TaskView::from(&info)),
                Err(CancelError::NoWorker(w)) => {
                    Err(OpError::new(ErrorKind::NoWorker, format!("no worker {w}")))
                }
                Err(CancelError::NotFound(name)) => Err(OpError::new(
                    ErrorKind::NotFound,
                    format!("no task named `{name}` on that worker"),
                )),
                Err(CancelError::Storage(message)) => {
                    Err(OpError::new(ErrorKind::Storage, message))
                }
            })
            .collect()
    }

    /// Cancels the task with id `id` (named or not) and waits (10 s at
    /// most) until it has ended: its final view.
    pub async fn cancel_by_id(&self, id: &str) -> Result<TaskView, OpError> {
        let id: u64 = id
            .parse()
            .map_err(|_| OpError::bad_request(format!("task id must be a number, not {id:?}")))?;
        let ended = tokio::time::timeout(DEFAULT_WAIT, self.host.cancel_task_by_id(id))
            .await
            .map_err(|_| {
                OpError::new(
                    ErrorKind::Timeout,
                    format!("task {id} had not ended after {DEFAULT_WAIT:?}"),
                )
            })?;
        match ended {
            Ok(info) => Ok(TaskView::from(&info)),
            Err(CancelError::Storage(message)) => Err(OpError::new(ErrorKind::Storage, message)),
            Err(CancelError::NotFound(_) | CancelError::NoWorker(_)) => {
                Err(OpError::new(ErrorKind::NotFound, format!("no task {id}")))
            }
        }
    }

    /// Waits until the task `request` names has ended (a task that has
    /// ended answers at once) and answers it, result included; a `timeout`
    /// error past `request.timeout_ms`, the task going on.
    pub async fn wait(&self, request: WaitRequest) -> Result<TaskView, OpError> {
        let timeout = request
            .timeout_ms
            .map_or(DEFAULT_WAIT, Duration::from_millis);
        if timeout > MAX_WAIT {
            return Err(OpError::bad_request(format!(
                "timeout_ms {} is over an hour: wait again instead",
                timeout.as_millis()
            )));
        }
        let mut task = self.awaited(&request)?;
        let what = match (&task.seen().ident.name, request.id) {
            (Some(name), None) => format!("`{name}` (task {})", task.seen().ident.id),
            _ => format!("task {}", task.seen().ident.id),
        };
        tokio::time::timeout(timeout, task.ended())
            .await
            .map(|info| TaskView::from(&info))
            .map_err(|_| {
                OpError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what} had not ended after {timeout:?}; it goes on (`taskhost cancel` \
                         stops a named task)"
                    ),
                )
            })
    }

    /// The task a wait names: by id on any worker, or by name (on
    /// `worker`, or the one worker that has such a task).
    fn awaited(&self, request: &WaitRequest) -> Result<crate::joins::Awaited, OpError> {
        use crate::joins::Awaited;
        let scopes = || {
            self.host
                .workers()
                .map(|w| w.clone() as Arc<dyn crate::registry::Listing>)
        };
        match (request.id, &request.name) {
            (Some(id), None) => {
                if request.worker.is_some() {
                    return Err(OpError::bad_request(
                        "`worker` goes with `name`: an id names one task of the host",
                    ));
                }
                scopes()
                    .find_map(|scope| Awaited::by_id(scope, id))
                    .ok_or_else(|| OpError::new(ErrorKind::NotFound, format!("no task {id}")))
            }
            (None, Some(name)) => {
                let mut found: Vec<Awaited> = scopes()
                    .filter(|scope| {
                        request
                            .worker
                            .is_none_or(|w| scope.registry().worker() == w)
                    })
                    .filter_map(|scope| Awaited::by_name(scope, name))
                    .collect();
                match found.len() {
                    0 => Err(OpError::new(
                        ErrorKind::NotFound,
                        match request.worker {
                            Some(worker) => format!("no task named `{name}` on worker {worker}"),
                            None => format!("no task named `{name}`"),
                        },
                    )),
                    1 => Ok(found.remove(0)),
                    _ => Err(OpError::bad_request(format!(
                        "tasks of workers {} are named `{name}`: give `worker` (--worker)",
                        found
                            .iter()
                            .map(|t| t.seen().ident.worker.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
            _ => Err(OpError::bad_request(
                "name the task to wait for by `id` or by `name`, one of them",
            )),
        }
    }

    /// Drops every ended task; their cluster-scoped names are free at once.
    pub async fn purge(&self) -> Result<Purged, OpError> {
        let host = &self.host;
        let purged = host
            .purge()
            .await
            .map_err(|e| OpError::new(ErrorKind::Storage, format!("{e:#}")))?;
        if let Some(cluster) = host.cluster() {
            cluster
                .names()
                .release_unlisted(|worker, id| {
                    host.worker(worker)
                        .is_some_and(|w| w.registry().get(id).is_some())
                })
                .await;
        }
        Ok(Purged { purged })
    }

    /// Dispatches `event`, after `wait_for` tasks wait for some event.
    pub async fn dispatch(&self, event: &str, request: DispatchRequest) -> Result<Woken, OpError> {
        let host = &self.host;
        crate::events::check_dispatch(event, &request.payload, &host.config().limits)
            .map_err(|limit| OpError::limit(ErrorKind::SizeLimit, &limit))?;
        host.events()
            .check_travels(event, false)
            .map_err(OpError::bad_request)?;
        if let Some(count) = request.wait_for {
            let timeout = request
                .timeout_ms
                .map_or(DEFAULT_WAIT, Duration::from_millis);
            tokio::time::timeout(timeout, host.events().until_waiting(count))
                .await
                .map_err(|_| {
                    OpError::new(
                        ErrorKind::Timeout,
                        format!("fewer than {count} task(s) were waiting after {timeout:?}"),
                    )
                })?;
        }
        Ok(Woken {
            woken: host.dispatch(event, &request.payload),
        })
    }

    /// Every loaded build: the serving one of each plugin, and older ones
    /// still draining.
    pub fn plugins(&self) -> Vec<PluginView> {
        self.host
            .builds()
            .into_iter()
            .map(|build| PluginView {
                name: build.plugin.name.to_string(),
                version: build.plugin.version.to_string(),
                path: build.plugin.path.clone(),
                wit: build.plugin.wit_version().to_string(),
                state: if build.serving {
                    BuildState::Serving
                } else {
                    BuildState::Draining
                },
                live_tasks: build.live_tasks,
                data_bytes: build.plugin.data_bytes,
                memory_image: if build.plugin.has_large_image() {
                    MemoryImage::CopyOnWrite
                } else {
                    MemoryImage::Copied
                },
                factories: build
                    .plugin
                    .factories
                    .iter()
                    .map(|f| FactoryView {
                        name: f.name.clone(),
                        description: f.description.clone(),
                    })
                    .collect(),
                host: None,
            })
            .collect()
    }

    /// Loads (or replaces) plugin `name` from `request.path`, here or, with
    /// `cluster`, on every host of the cluster.
    pub async fn load_plugin(&self, name: &str, request: LoadRequest) -> Result<Loaded, OpError> {
        if request.cluster {
            return cluster::roll_out(&self.host, name, &request).await;
        }
        let plugin = self
            .host
            .load_plugin(name, &request.path)
            .await
            .map_err(load_error)?;
        let restarted = if request.restart_tasks {
            self.host
                .restart_startup_tasks(name)
                .await
                .map_err(|error| OpError::new(ErrorKind::Refused, format!("{error:#}")))?
        } else {
            0
        };
        Ok(Loaded {
            name: plugin.name.to_string(),
            version: plugin.version.to_string(),
            path: plugin.path.clone(),
            restarted,
            rollout: Vec::new(),
        })
    }

    fn scheduler(&self) -> Result<&Arc<Scheduler>, OpError> {
        self.host.scheduler().ok_or_else(|| {
            OpError::new(ErrorKind::Starting, "the schedules start with the workers")
        })
    }

    /// Every schedule: next run, last outcome, runs, misses.
    pub fn schedules(&self) -> Result<Vec<ScheduleView>, OpError> {
        Ok(self.scheduler()?.list().iter().map(schedule_view).collect())
    }

    /// `pause` and `resume` answer with the schedule; `trigger` with the
    /// tasks it started (409 when its `overlap` refuses).
    pub async fn steer_schedule(
        &self,
        name: &str,
        action: ScheduleAction,
    ) -> Result<serde_json::Value, OpError> {
        let scheduler = self.scheduler()?;
        let answer = match action {
            ScheduleAction::Pause | ScheduleAction::Resume => {
                let info = scheduler
                    .set_paused(name, action == ScheduleAction::Pause)
                    .await
                    .map_err(schedule_error)?;
                serde_json::to_value(schedule_view(&info))
            }
            ScheduleAction::Trigger => {
                let tasks = scheduler.trigger(name).await.map_err(schedule_error)?;
                serde_json::to_value(Triggered {
                    schedule: name.to_string(),
                    tasks,
                })
            }
        };
        answer.map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))
    }

    fn queue(&self, name: &str) -> Result<&Arc<crate::queues::Queue>, OpError> {
        self.host
            .queues()
            .get(name)
            .map_err(|why| OpError::new(ErrorKind::NotFound, why))
    }

    /// Every queue, in app.toml's order (`default` last unless listed).
    pub async fn queues(&self) -> Result<Vec<QueueView>, OpError> {
        let dead: std::collections::HashMap<String, u64> = self
            .host
            .storage()
            .queues()
            .dead_counts()
            .await
            .map_err(storage_error)?
            .into_iter()
            .collect();
        Ok(self
            .host
            .queues()
            .all()
            .map(|queue| queue_view(queue, dead.get(&**queue.name()).copied().unwrap_or(0)))
            .collect())
    }

    /// One queue, as [`Operations::queues`] lists it.
    async fn queue_now(&self, queue: &crate::queues::Queue) -> Result<QueueView, OpError> {
        let dead = self
            .host
            .storage()
            .queues()
            .dead_counts()
            .await
            .map_err(storage_error)?
            .into_iter()
            .find(|(name, _)| **name == **queue.name())
            .map_or(0, |(_, count)| count);
        Ok(queue_view(queue, dead))
    }

    /// Pauses, resumes, drains or resets queue `name`; kept across
    /// restarts.
    pub async fn steer_queue(&self, name: &str, action: QueueAction) -> Result<QueueView, OpError> {
        let queue = self.queue(name)?;
        self.change_queue(queue, |settings| match action {
            QueueAction::Pause => settings.paused = true,
            QueueAction::Resume => {
                settings.paused = false;
                settings.draining = false;
            }
            QueueAction::Drain => settings.draining = true,
            QueueAction::Reset => *settings = crate::queues::Settings::default(),
        })
        .await
    }

    /// Changes queue `name`'s limits (each field given); kept across
    /// restarts until a `reset`.
    pub async fn set_queue_limits(
        &self,
        name: &str,
        change: crate::config::LimitsChange,
    ) -> Result<QueueView, OpError> {
        if change.is_empty() {
            return Err(OpError::bad_request(
                "no limit to change: give concurrency, max_waiting, per_key, rate, burst, \
                 key_rate or key_burst",
            ));
        }
        let queue = self.queue(name)?;
        self.change_queue(queue, |settings| {
            settings.limits = settings.limits.then(&change)
        })
        .await
    }

    /// Checks a change of `queue`'s settings, records it, then makes it:
    /// a change the storage did not take is not made.
    async fn change_queue(
        &self,
        queue: &Arc<crate::queues::Queue>,
        change: impl FnOnce(&mut crate::queues::Settings),
    ) -> Result<QueueView, OpError> {
        let name = queue.name().clone();
        let _one_at_a_time = self.host.queues().changing().await;
        let settings = queue
            .planned(change)
            .map_err(|why| OpError::bad_request(format!("queue `{name}`: {why}")))?;
        let json = match settings.is_empty() {
            true => None,
            false => Some(
                serde_json::to_string(&settings)
                    .map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))?,
            ),
        };
        self.host
            .storage()
            .queues()
            .set_queue_settings(&name, json.as_deref())
            .await
            .map_err(storage_error)?;
        queue
            .apply(settings)
            .map_err(|why| OpError::new(ErrorKind::Internal, why))?;
        tracing::info!(
            queue = &*name,
            settings = json.as_deref().unwrap_or("{}"),
            "queue {name}: run-time settings now {}",
            json.as_deref().unwrap_or("app.toml's")
        );
        self.queue_now(queue).await
    }

    /// A page of dead letters, oldest first.
    pub async fn dead(&self, query: &DeadQuery) -> Result<DeadLetters, OpError> {
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        let mut letters = self
            .host
            .storage()
            .queues()
            .dead(query.queue.as_deref(), query.after.unwrap_or(0), limit + 1)
            .await
            .map_err(storage_error)?;
        // Letters outlive a queue app.toml no longer lists; a name with
        // neither is a typo.
        if letters.is_empty()
            && let Some(queue) = &query.queue
        {
            self.queue(queue)?;
        }
        let next_after = match letters.len() > limit as usize {
            true => {
                letters.truncate(limit as usize);
                letters.last().map(|letter| letter.id)
            }
            false => None,
        };
        Ok(DeadLetters {
            letters,
            next_after,
        })
    }

    async fn dead_letter(&self, id: u64) -> Result<crate::storage::StoredLetter, OpError> {
        self.host
            .storage()
            .queues()
            .dead_letter(id)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| {
                OpError::new(
                    ErrorKind::NotFound,
                    format!("no dead letter {id} (`taskhost dead` lists them)"),
                )
            })
    }

    /// Submits dead letter `id` again, to its queue with its key, priority
    /// and retry policy, on its worker (worker 0 if that one is gone); the
    /// letter is dropped once the task is taken in. A refused submission
    /// (its name is taken, its queue is full) leaves the letter. A durable
    /// task comes back durable (with a new record and key). Retries and
    /// discards go one at a time, so two of one letter submit it once.
    pub async fn retry_dead(&self, id: u64) -> Result<Submitted, OpError> {
        let _one_at_a_time = self.host.queues().changing().await;
        let stored = self.dead_letter(id).await?;
        let letter = stored.letter;
        let worker = Some(letter.worker)
            .filter(|worker| self.host.workers().any(|w| w.id() == *worker))
            .unwrap_or(WorkerId::Index(0));
        let submission = Submission {
            plugin: letter.plugin,
            factory: letter.factory,
            args: letter.args,
            name: letter.name,
            worker: Some(worker),
            all_workers: false,
            retry: letter.retry,
            restart: letter.restart,
            on_load: None,
            durable: letter.durable.into(),
            idempotency_key: None,
            host: None,
            scope: NameScope::Worker,
            queue: Some(stored.queue),
            key: letter.key,
            priority: Some(i64::from(letter.priority)),
            delay: None,
            run_at: None,
            traceparent: None,
        };
        let submitted = self.submit_here(submission).await?;
        if let Err(error) = self.host.storage().queues().remove_dead(id).await {
            tracing::error!(
                "dead letter {id} was submitted again but cannot be dropped ({error:#}): \
                 `taskhost dead discard {id}` drops it"
            );
        }
        Ok(submitted)
    }

    /// Drops dead letter `id`, answering with it.
    pub async fn discard_dead(&self, id: u64) -> Result<crate::storage::StoredLetter, OpError> {
        let _one_at_a_time = self.host.queues().changing().await;
        let stored = self.dead_letter(id).await?;
        self.host
            .storage()
            .queues()
            .remove_dead(id)
            .await
            .map_err(storage_error)?;
        Ok(stored)
    }

    fn kv(&self) -> &Arc<dyn KvStore> {
        self.host.storage().kv()
    }

    /// Every key-value bucket, with its key and byte counts.
    pub async fn kv_buckets(&self) -> Result<Vec<KvBucketView>, OpError> {
        let stats = self.kv().buckets().await?;
        Ok(stats
            .into_iter()
            .map(|s| KvBucketView {
                bucket: s.bucket.to_string(),
                keys: s.keys,
                bytes: s.bytes,
            })
            .collect())
    }

    /// A page of `bucket`'s keys, in byte order.
    pub async fn kv_keys(&self, bucket: &str, query: &KeysQuery) -> Result<KvKeys, OpError> {
        let id = bucket_id(bucket)?;
        let limit = query.limit.unwrap_or(1000).clamp(1, MAX_KEYS_PER_PAGE);
        let page = self
            .kv()
            .list_keys(&id, query.after.as_deref(), limit)
            .await?;
        Ok(KvKeys {
            bucket: id.to_string(),
            keys: page.keys,
            next: page.next,
        })
    }

    /// One value: as text when it is UTF-8, else base64.
    pub async fn kv_get(&self, bucket: &str, key: String) -> Result<KvEntry, OpError> {
        let id = bucket_id(bucket)?;
        let value = self.kv().get(&id, &key).await?.ok_or_else(|| {
            OpError::new(
                ErrorKind::NotFound,
                format!("bucket {id} has no key {key:?}"),
            )
        })?;
        let (text, base64) = match String::from_utf8(value) {
            Ok(text) => (Some(text), None),
            Err(error) => (None, Some(BASE64.encode(error.into_bytes()))),
        };
        Ok(KvEntry {
            bucket: id.to_string(),
            key,
            text,
            base64,
        })
    }

    /// Stores exactly one of `put.text` and `put.base64` under `key`.
    pub async fn kv_put(
        &self,
        bucket: &str,
        key: String,
        put: KvPut,
    ) -> Result<KvWritten, OpError> {
        let id = bucket_id(bucket)?;
        let value = match (put.text, put.base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => BASE64
                .decode(encoded.as_bytes())
                .map_err(|e| OpError::bad_request(format!("`base64` is not base64: {e}")))?,
            _ => {
                return Err(OpError::bad_request(
                    "give exactly one of `text` and `base64`",
                ));
            }
        };
        self.kv().set(&id, &key, &value).await?;
        // Operators change state tasks rely on: leave a trace of it.
        tracing::info!(bucket = %id, key, bytes = value.len(), "key-value entry set through the control API");
        Ok(KvWritten {
            bucket: id.to_string(),
            key,
            bytes: value.len(),
            deleted: false,
        })
    }

    /// Deletes `key`; `deleted` says whether there was one.
    pub async fn kv_delete(&self, bucket: &str, key: String) -> Result<KvWritten, OpError> {
        let id = bucket_id(bucket)?;
        let deleted = self.kv().delete(&id, &key).await?;
        if deleted {
            tracing::info!(bucket = %id, key, "key-value entry deleted through the control API");
        }
        Ok(KvWritten {
            bucket: id.to_string(),
            key,
            bytes: 0,
            deleted,
        })
    }

    /// The hosts of this host's cluster, as heard lately.
    pub fn hosts(&self) -> Result<Vec<crate::cluster::HostBeat>, OpError> {
        let cluster = self.host.cluster().ok_or_else(cluster::no_cluster)?;
        Ok(cluster.hosts())
    }

    /// `degraded` while a part the host relies on is away (in a cluster:
    /// NATS), `ok` otherwise.
    pub fn health(&self) -> Health {
        let mut problems = Vec::new();
        if let Some(cluster) = self.host.cluster()
            && !cluster.is_connected()
        {
            problems.push(format!(
                "NATS is unreachable: events and tasks do not reach the other hosts of cluster \
                 `{}` (local work goes on; the client reconnects)",
                cluster.config().name
            ));
        }
        Health {
            status: if problems.is_empty() {
                "ok"
            } else {
                "degraded"
            }
            .into(),
            problems,
        }
    }

    /// `call` answered by this host alone, as JSON.
    pub async fn call(&self, call: types::ClusterCall) -> Result<serde_json::Value, OpError> {
        use types::ClusterCall;
        let value = match call {
            ClusterCall::ListTasks { filter } => serde_json::to_value(self.list_tasks(&filter)?),
            ClusterCall::ListPlugins => serde_json::to_value(self.plugins()),
            ClusterCall::ListSchedules => serde_json::to_value(self.schedules()?),
            ClusterCall::Cancel { request } => serde_json::to_value(self.cancel(request).await?),
            ClusterCall::Purge => serde_json::to_value(self.purge().await?),
            ClusterCall::Wait { request } => serde_json::to_value(self.wait(request).await?),
        };
        value.map_err(|e| OpError::new(ErrorKind::Internal, e.to_string()))
    }

    /// `call` on every host of the cluster present: the answers' arrays
    /// joined, each entry with its `host`. A host's `not_found` (no task
    /// of that name there) is no error while another host answered.
    pub async fn across_cluster(
        &self,
        call: types::ClusterCall,
    ) -> Result<Vec<serde_json::Value>, OpError> {
        cluster::across(&self.host, call).await
    }
}

/// `worker` in queries and bodies: an index, or `main`.
fn parse_worker(text: &str) -> Result<WorkerId, OpError> {
    text.parse()
        .map_err(|message: String| OpError::bad_request(message))
}

fn bucket_id(text: &str) -> Result<BucketId, OpError> {
    BucketId::parse(text).map_err(|e| OpError::bad_request(e.to_string()))
}

fn load_error(error: LoadError) -> OpError {
    let kind = match error {
        LoadError::Missing(_) => ErrorKind::NotFound,
        LoadError::Refused(_) => ErrorKind::Refused,
    };
    OpError::new(kind, error.to_string())
}

fn schedule_error(error: ScheduleError) -> OpError {
    let kind = match error {
        ScheduleError::NotFound(_) => ErrorKind::NotFound,
        ScheduleError::Conflict(_) => ErrorKind::Conflict,
        ScheduleError::Invalid(_) => ErrorKind::BadRequest,
        ScheduleError::Limit(_) => ErrorKind::Limit,
        ScheduleError::Storage(_) => ErrorKind::Storage,
    };
    OpError::new(kind, error.to_string())
}

/// A schedule as the API shows it.
fn schedule_view(info: &crate::scheduler::ScheduleInfo) -> ScheduleView {
    ScheduleView {
        name: info.name.clone(),
        plugin: info.plugin.clone(),
        factory: info.factory.clone(),
        when: info.when.clone(),
        scope: info.scope,
        overlap: info.overlap,
        catch_up: info.catch_up,
        added: info.added,
        paused: info.paused,
        next_at_ms: info.next.map(crate::task::unix_millis),
        last_tick: info.last_tick.map(crate::config::tick_label),
        last_task: info.last_task.clone(),
        last_state: info.last_state,
        runs: info.runs,
        misses: info.misses,
    }
}

/// A storage call's failure, as the API answers it.
fn storage_error(error: anyhow::Error) -> OpError {
    OpError::new(ErrorKind::Storage, format!("{error:#}"))
}

/// `queue` as `GET /v1/queues` shows it, with `dead` letters kept.
fn queue_view(queue: &crate::queues::Queue, dead: u64) -> QueueView {
    let stats = queue.stats();
    let config = &stats.config;
    QueueView {
        name: queue.name().to_string(),
        paused: stats.settings.paused,
        draining: stats.settings.draining,
        waiting: stats.waiting,
        delayed: stats.delayed,
        running: stats.running,
        blocked: stats.blocked,
        started: stats.started,
        started_per_second: stats.started_per_second,
        throttled: stats.throttled,
        oldest_wait_ms: stats.oldest_wait.map(|wait| wait.as_millis() as u64),
        dead,
        keys: stats.keys,
        limits: types::QueueLimitsView {
            concurrency: config.concurrency,
            max_waiting: config.max_waiting,
            per_key: config.per_key,
            key_arg: config.key_arg.as_ref().map(|path| path.join(".")),
            rate: config.rate.map(|rate| rate.to_string()),
            burst: config.rate.map(|rate| rate.burst),
            key_rate: config.key_rate.map(|rate| rate.to_string()),
            key_burst: config.key_rate.map(|rate| rate.burst),
            ageing: config
                .ageing
                .map(|every| humantime::format_duration(every).to_string()),
            dedupe: config.dedupe,
            max_dead: config.max_dead,
        },
        changed: stats.settings.limits.clone(),
        top_keys: stats
            .top_keys
            .into_iter()
            .map(|(key, waiting, running)| types::KeyLoadView {
                key,
                waiting,
                running,
            })
            .collect(),
    }
}
