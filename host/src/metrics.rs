//! What a host counts and measures, in Prometheus terms (served at
//! `/metrics`), and the totals `taskhost run` reports when it stops.

use crate::task::{Outcome, TaskInfo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

type Labels = Vec<(String, String)>;

/// Counters and latency histograms, updated as tasks come and go; gauges
/// (tasks by state, plugin versions) are filled in when scraped.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub spawned: Counter,
    pub done: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
    /// From `add_task` (registration) to the factory starting to run.
    spawn_latency: Histogram,
    /// From a cancel request to the task having ended.
    cancel_latency: Histogram,
    tasks: Family<Labels, Gauge>,
    plugins: Family<Labels, Gauge>,
    /// Kept current by each task's memory budget.
    task_memory: Gauge,
    /// Read from the OS when scraped.
    resident: Gauge,
    /// Instances made ahead of demand, idle until a task takes one.
    pub prepared: Gauge,
    /// Tasks that started in an instance made ahead of demand.
    pub prepared_starts: Counter,
    /// Supervised tasks started again (`restart = ...`), by `plugin`.
    restarts: Family<Labels, Counter>,
    /// Times the host gave the heap's free pages back (after a purge, or
    /// after connections closed).
    pub heap_trims: Counter,
    /// Steps resuming tasks appended to their journals, and answered from
    /// them on replay (`durable = "resume"`).
    pub journal: JournalMetrics,
    /// Tasks waiting for an event on this host (set when scraped).
    pub event_waiters: Gauge,
    /// Hosts of the cluster heard from lately, this one included (set
    /// when scraped).
    pub cluster_hosts: Gauge,
    /// Events between the hosts of a cluster, by `direction`: `sent`,
    /// `received`, `dropped` (the queue to NATS was full).
    cluster_events: Family<Labels, Counter>,
    /// What the public listener's routes did.
    pub routes: RouteMetrics,
    /// What the two HTTP servers' connections did.
    pub servers: ServerMetrics,
    /// What each queue holds and did.
    pub queues: QueueMetrics,
}

/// Connections of the host's HTTP servers (`crate::serve`), by `server`
/// (`public`, `control`). Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    /// Open connections (websockets included until they close).
    open: Family<Labels, Gauge>,
    /// Connections closed for not sending a request's head in time.
    timed_out: Family<Labels, Counter>,
    /// Times the server reached its connection cap and stopped accepting.
    at_cap: Family<Labels, Counter>,
}

fn server_label(server: &str) -> Labels {
    vec![("server".to_string(), server.to_string())]
}

impl ServerMetrics {
    pub(crate) fn opened(&self, server: &str) {
        self.open.get_or_create(&server_label(server)).inc();
    }

    pub(crate) fn closed(&self, server: &str) {
        self.open.get_or_create(&server_label(server)).dec();
    }

    pub(crate) fn timed_out(&self, server: &str) {
        self.timed_out.get_or_create(&server_label(server)).inc();
    }

    pub(crate) fn at_cap(&self, server: &str) {
        self.at_cap.get_or_create(&server_label(server)).inc();
    }
}

/// What each queue (`[[queues]]`) holds and did, by `queue`. Cloning
/// shares the series.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    /// Tasks waiting, delayed ones included.
    pub(crate) waiting: Family<Labels, Gauge>,
    /// Tasks holding a turn (running, or waiting for room on a worker).
    pub(crate) running: Family<Labels, Gauge>,
    /// Tasks the queue let start.
    pub(crate) started: Family<Labels, Counter>,
    /// Starts held back by a rate (`rate`, `key_rate`).
    pub(crate) throttled: Family<Labels, Counter>,
    /// Tasks that failed their last attempt, kept as dead letters.
    pub(crate) dead: Family<Labels, Counter>,
    /// From when a task could start (its submission, or its delay's end)
    /// to its turn.
    pub(crate) wait_seconds: Family<Labels, Histogram>,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        QueueMetrics {
            waiting: Family::default(),
            running: Family::default(),
            started: Family::default(),
            throttled: Family::default(),
            dead: Family::default(),
            // 100 us .. ~14.5 h, quadrupling.
            wait_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-4, 4.0, 16))
            }),
        }
    }
}

/// The label set of queue `name`'s series.
pub(crate) fn queue_label(name: &str) -> Labels {
    vec![("queue".to_string(), name.to_string())]
}

/// What the public listener's routes did, by `route` (`websocket /feed`,
/// `POST /hooks/build`). Cloning shares the counters.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// Open websocket connections.
    pub open: Family<Labels, Gauge>,
    /// Websocket messages, by `direction` (`in`: from clients).
    messages: Family<Labels, Counter>,
    /// Connections the host ended, by `reason`: `slow` (a full send
    /// buffer), `idle`, `too_big` (a message over the limit), `refused`
    /// (over a connection limit).
    dropped: Family<Labels, Counter>,
    /// HTTP answers (webhooks and refused upgrades), by `status`.
    requests: Family<Labels, Counter>,
    /// From a request's arrival to its answer (webhooks), by route.
    latency: Family<Labels, Histogram>,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            open: Family::default(),
            messages: Family::default(),
            dropped: Family::default(),
            requests: Family::default(),
            // 100 us .. ~52 s, doubling.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1e-4, 2.0, 20))
            }),
        }
    }
}

fn route_label(route: &str) -> Labels {
    vec![("route".to_string(), route.to_string())]
}

fn labels(route: &str, key: &str, value: &str) -> Labels {
    vec![
        ("route".to_string(), route.to_string()),
        (key.to_string(), value.to_string()),
    ]
}

impl RouteMetrics {
    pub fn opened(&self, route: &str) {
        self.open.get_or_create(&route_label(route)).inc();
    }

    pub fn closed(&self, route: &str) {
        self.open.get_or_create(&route_label(route)).dec();
    }

    pub fn message(&self, route: &str, direction: &str) {
        self.messages
            .get_or_create(&labels(route, "direction", direction))
            .inc();
    }

    pub fn dropped(&self, route: &str, reason: &str) {
        self.dropped
            .get_or_create(&labels(route, "reason", reason))
            .inc();
    }

    pub fn answered(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&labels(route, "status", &status.to_string()))
            .inc();
        self.latency
            .get_or_create(&route_label(route))
            .observe(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Gauge::default(), HttpMetrics::default())
    }
}

/// What resuming tasks' journals did. Cloning shares the counters.
#[derive(Debug, Clone, Default)]
pub struct JournalMetrics {
    /// Steps committed to journals.
    pub appended: Counter,
    /// Steps answered from journals.
    pub replayed: Counter,
}

/// What the trace exporter did with spans (`[telemetry]`). Cloning shares
/// the counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceMetrics {
    /// Spans the collector took.
    pub(crate) exported: Counter,
    /// Spans dropped because the exporter's queue was full.
    pub(crate) dropped: Counter,
    /// Spans in posts that failed (the collector down or refusing).
    pub(crate) failed: Counter,
}

/// What tasks' outbound HTTP requests did, by plugin. Cloning shares the
/// counters: every task's store holds a clone.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// By `plugin` and `status`: `2xx`..`5xx`, or `error` (no response).
    requests: Family<Labels, Counter>,
    /// Requests refused by the allow-list, by `plugin`.
    denied: Family<Labels, Counter>,
    /// From sending to the response's head (or the error).
    duration: Histogram,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            denied: Family::default(),
            // 1 ms .. ~65 s, doubling.
            duration: Histogram::new(exponential_buckets(1e-3, 2.0, 17)),
        }
    }
}

impl HttpMetrics {
    /// A request that went out: `status` is none when it got no response.
    pub fn record(&self, plugin: &str, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(status) => format!("{}xx", status / 100),
            None => "error".to_string(),
        };
        self.requests
            .get_or_create(&vec![
                ("plugin".to_string(), plugin.to_string()),
                ("status".to_string(), class),
            ])
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// A request the allow-list refused.
    pub fn denied(&self, plugin: &str) {
        self.denied
            .get_or_create(&vec![("plugin".to_string(), plugin.to_string())])
            .inc();
    }
}

impl Metrics {
    /// Metrics reporting `task_memory` (the linear memory of live tasks,
    /// which the tasks' memory budgets keep current).
    pub fn new(task_memory: Gauge, http: HttpMetrics) -> Self {
        let mut registry = Registry::with_prefix("taskhost");
        // 1 us .. ~16 s, doubling.
        let buckets = || exponential_buckets(1e-6, 2.0, 25);
        let metrics = Metrics {
            spawned: Counter::default(),
            done: Counter::default(),
            failed: Counter::default(),
            cancelled: Counter::default(),
            spawn_latency: Histogram::new(buckets()),
            cancel_latency: Histogram::new(buckets()),
            tasks: Family::default(),
            plugins: Family::default(),
            task_memory,
            resident: Gauge::default(),
            prepared: Gauge::default(),
            prepared_starts: Counter::default(),
            restarts: Family::default(),
            heap_trims: Counter::default(),
            journal: JournalMetrics::default(),
            event_waiters: Gauge::default(),
            cluster_hosts: Gauge::default(),
            cluster_events: Family::default(),
            routes: RouteMetrics::default(),
            servers: ServerMetrics::default(),
            queues: QueueMetrics::default(),
            registry: Registry::default(),
        };
        registry.register("tasks_spawned", "Tasks started", metrics.spawned.clone());
        registry.register(
            "task_restarts",
            "Supervised tasks started again after a run ended (restart = ...), by plugin",
            metrics.restarts.clone(),
        );
        registry.register(
            "tasks_done",
            "Tasks that returned a result",
            metrics.done.clone(),
        );
        registry.register(
            "tasks_failed",
            "Tasks that failed or trapped",
            metrics.failed.clone(),
        );
        registry.register(
            "tasks_cancelled",
            "Tasks that ended by cancellation",
            metrics.cancelled.clone(),
        );
        registry.register(
            "spawn_latency_seconds",
            "From add_task to the factory starting to run",
            metrics.spawn_latency.clone(),
        );
        registry.register(
            "cancel_latency_seconds",
            "From a cancel request to the task having ended",
            metrics.cancel_latency.clone(),
        );
        registry.register(
            "tasks",
            "Registered tasks by state (ended ones until purged)",
            metrics.tasks.clone(),
        );
        registry.register(
            "plugin_info",
            "Plugins new tasks start from, with their versions",
            metrics.plugins.clone(),
        );
        registry.register(
            "task_memory_bytes",
            "Linear memory held by live tasks",
            metrics.task_memory.clone(),
        );
        registry.register(
            "http_requests",
            "Outbound HTTP requests by plugin and status class (or error)",
            http.requests,
        );
        registry.register(
            "http_denied",
            "Outbound HTTP requests the allow-list refused, by plugin",
            http.denied,
        );
        registry.register(
            "http_request_duration_seconds",
            "From sending a request to its response's head",
            http.duration,
        );
        registry.register(
            "connections_open",
            "Open websocket connections of the public listener, by route",
            metrics.routes.open.clone(),
        );
        registry.register(
            "connection_messages",
            "Websocket messages by route and direction (in: from clients)",
            metrics.routes.messages.clone(),
        );
        registry.register(
            "connections_dropped",
            "Connections the host ended, by route and reason (slow, idle, too_big, refused)",
            metrics.routes.dropped.clone(),
        );
        registry.register(
            "route_requests",
            "Answers of the public listener's HTTP routes, by route and status",
            metrics.routes.requests.clone(),
        );
        registry.register(
            "route_latency_seconds",
            "From a webhook request's arrival to its answer, by route",
            metrics.routes.latency.clone(),
        );
        registry.register(
            "server_connections",
            "Open connections of the host's HTTP servers, by server (public, control)",
            metrics.servers.open.clone(),
        );
        registry.register(
            "server_header_timeouts",
            "Connections closed for not sending a request's head within the header timeout, by server",
            metrics.servers.timed_out.clone(),
        );
        registry.register(
            "server_at_cap",
            "Times a server reached its connection cap and stopped accepting until one closed, by server",
            metrics.servers.at_cap.clone(),
        );
        registry.register(
            "prepared_instances",
            "Instances made ahead of demand, idle until a task of their plugin takes one",
            metrics.prepared.clone(),
        );
        registry.register(
            "prepared_starts",
            "Tasks that started in an instance made ahead of demand",
            metrics.prepared_starts.clone(),
        );
        registry.register(
            "heap_trims",
            "Times the host gave the heap's free pages back to the kernel (after a purge, or after connections closed)",
            metrics.heap_trims.clone(),
        );
        registry.register(
            "journal_steps_appended",
            "Steps resuming tasks appended to their journals (durable = \"resume\")",
            metrics.journal.appended.clone(),
        );
        registry.register(
            "journal_steps_replayed",
            "Steps of resuming tasks answered from their journals after a restart",
            metrics.journal.replayed.clone(),
        );
        registry.register(
            "event_waiters",
            "Tasks waiting for an event on this host",
            metrics.event_waiters.clone(),
        );
        registry.register(
            "cluster_hosts",
            "Hosts of the cluster heard from in the last 3 s, this one included",
            metrics.cluster_hosts.clone(),
        );
        registry.register(
            "cluster_events",
            "Events between the hosts of the cluster, by direction (sent, received, dropped: queue full, unsent: NATS unreachable)",
            metrics.cluster_events.clone(),
        );
        registry.register(
            "queue_waiting",
            "Tasks waiting in each queue, delayed ones included",
            metrics.queues.waiting.clone(),
        );
        registry.register(
            "queue_running",
            "Tasks of each queue holding a turn (running, or waiting for room on a worker)",
            metrics.queues.running.clone(),
        );
        registry.register(
            "queue_started",
            "Tasks each queue let start",
            metrics.queues.started.clone(),
        );
        registry.register(
            "queue_throttled",
            "Starts held back by a queue's rate or key rate",
            metrics.queues.throttled.clone(),
        );
        registry.register(
            "queue_dead_letters",
            "Tasks of each queue that failed their last attempt, kept as dead letters",
            metrics.queues.dead.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "From when a queued task could start (submission or delay's end) to its turn",
            metrics.queues.wait_seconds.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident set size of the host process",
            metrics.resident.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Registers what the storage backend measures of its calls: each
    /// call's time (waiting for SQLite's locks included) and the calls
    /// waiting now. A lock held from outside shows as calls that wait.
    /// Registers `taskhost_sockets_open`, which tasks' sockets count in
    /// (`crate::sockets`).
    pub(crate) fn with_sockets(mut self, open: Gauge) -> Metrics {
        self.registry.register(
            "sockets_open",
            "TCP sockets tasks hold open, host-wide ([limits] sockets_per_app bounds it)",
            open,
        );
        self
    }

    /// Registers `taskhost_instances_total{pool}` (`made`) and
    /// `taskhost_warm_slots_free{pool}` (`free`), which the engine's pools
    /// keep (`engine::PoolMetrics`).
    pub(crate) fn with_pools(
        mut self,
        made: Family<Labels, Counter>,
        free: Family<Labels, Gauge>,
    ) -> Metrics {
        self.registry.register(
            "instances",
            "Instances made for tasks, by pool: warm ([limits] warm_instances), cold (the rest \
             of [limits] instances), warm_images ([limits] warm_image_instances, Python and \
             JavaScript plugins) and on_demand (large images past it, slower to start)",
            made,
        );
        self.registry.register(
            "warm_slots_free",
            "Free slots of the warm pool and the warm image pool (set when scraped); at 0, \
             tasks start in the cold pool or on demand",
            free,
        );
        self
    }

    pub(crate) fn with_traces(mut self, traces: &TraceMetrics) -> Metrics {
        self.registry.register(
            "trace_spans_exported",
            "Spans the OTLP collector took ([telemetry])",
            traces.exported.clone(),
        );
        self.registry.register(
            "trace_spans_dropped",
            "Spans dropped because the exporter's queue was full ([telemetry] queue_spans)",
            traces.dropped.clone(),
        );
        self.registry.register(
            "trace_spans_failed",
            "Spans in posts to the OTLP collector that failed",
            traces.failed.clone(),
        );
        self
    }

    pub(crate) fn with_storage(mut self, call_seconds: Histogram, waiting: Gauge) -> Metrics {
        self.registry.register(
            "storage_call_seconds",
            "Time of each storage call (key-value, durable tasks, schedules), waiting for locks included",
            call_seconds,
        );
        self.registry.register(
            "storage_calls_waiting",
            "Storage calls started and not yet answered",
            waiting,
        );
        self
    }
}

/// The process's resident set, from /proc (Linux); none elsewhere.
/// `status` reports it in KiB, whatever the page size.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Metrics {
    pub(crate) fn record_end(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Done { .. } => self.done.inc(),
            Outcome::Failed { .. } => self.failed.inc(),
            Outcome::Cancelled { .. } => self.cancelled.inc(),
        };
    }

    /// A supervised task of `plugin` is started again.
    pub(crate) fn record_restart(&self, plugin: &str) {
        self.restarts
            .get_or_create(&vec![("plugin".to_string(), plugin.to_string())])
            .inc();
    }

    /// One event sent to or received from the other hosts.
    pub(crate) fn cluster_event(&self, direction: &str) {
        self.cluster_events
            .get_or_create(&vec![("direction".to_string(), direction.to_string())])
            .inc();
    }

    /// Brings the count of events the other hosts missed up to `dropped`.
    pub(crate) fn cluster_events_dropped(&self, dropped: u64) {
        let counter = self
            .cluster_events
            .get_or_create(&vec![("direction".to_string(), "dropped".to_string())]);
        counter.inc_by(dropped.saturating_sub(counter.get()));
    }

    pub(crate) fn record_spawn(&self, latency: Duration) {
        self.spawned.inc();
        self.spawn_latency.observe(latency.as_secs_f64());
    }

    /// The cancel latency histogram, for the registries' cancel policy
    /// (a handle on the same buckets).
    pub(crate) fn cancel_latency(&self) -> Histogram {
        self.cancel_latency.clone()
    }

    /// The Prometheus text exposition, with the gauges set from `tasks` and
    /// `plugins` (name, version).
    pub fn encode(&self, tasks: &[TaskInfo], plugins: &[(String, String)]) -> String {
        self.tasks.clear();
        for state in [
            "queued",
            "pending",
            "running",
            "done",
            "failed",
            "cancelled",
        ] {
            let count = tasks.iter().filter(|t| t.state.as_str() == state).count();
            self.tasks
                .get_or_create(&vec![("state".into(), state.into())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        self.plugins.clear();
        for (name, version) in plugins {
            self.plugins
                .get_or_create(&vec![
                    ("plugin".into(), name.clone()),
                    ("version".into(), version.clone()),
                ])
                .set(1);
        }
        if let Some(bytes) = resident_bytes() {
            self.resident.set(bytes);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
