//! Several hosts as one app, over NATS (docs/cluster.md).
//!
//! Without `[cluster]` none of this runs. With it, the host connects to
//! NATS at launch and keeps the connection (the client reconnects on its
//! own, and resubscribes); every subject starts with the cluster's name:
//! - `{name}.events.{event}`: a dispatch made on one host, for the others
//!   ([`events`]);
//! - `{name}.hosts.{host}`: each host's heartbeat ([`members`]);
//! - `{name}.{kind}.any|all|host.{host}`: requests one host makes of others,
//!   answered as the control API would (`tasks`: add a task; [`requests`]);
//! - `{name}.any`: tasks for any host, taken by the hosts with room
//!   ([`any`]).

pub mod any;
mod builds;
pub mod durable;
mod events;
mod journal;
pub mod kv;
pub mod members;
pub mod names;
pub mod queues;
pub mod requests;
pub mod rollout;
pub mod singletons;
pub mod ticks;

pub use members::HostBeat;
pub use requests::{Answer, Kind, RequestError, Responder, Target};

use crate::config::{ClusterAuth, ClusterConfig};
use crate::worker::TaskEnv;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The header naming the host a message came from, so a host can tell its
/// own messages from the others'.
pub const HOST_HEADER: &str = "Taskhost-Host";

/// How long a host waits for NATS at launch before it says it cannot
/// reach it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long leaving waits for what is still queued to reach NATS.
const LEAVE_FLUSH: Duration = Duration::from_secs(2);

/// The JetStream object store `bucket`, made (with `description`) if it
/// does not exist yet.
async fn object_store(
    jetstream: &async_nats::jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<async_nats::jetstream::object_store::ObjectStore> {
    if let Ok(store) = jetstream.get_object_store(bucket).await {
        return Ok(store);
    }
    jetstream
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: bucket.to_string(),
            description: Some(description.to_string()),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot open the JetStream object store {bucket}"))
}

/// Whether `client` is connected now. While it is not, the client would
/// queue what it is given and send it once back, maybe long after anyone
/// waited for it: a task request, a name's claim, a stale event. So every
/// NATS call of the cluster is made only while connected, and fails (or is
/// dropped and counted) at once otherwise.
pub(crate) fn online(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// This host's membership in its cluster.
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    /// Whether the client is connected now: it reconnects on its own.
    connected: Arc<AtomicBool>,
    members: Arc<members::Members>,
    /// Cluster-scoped task names (`scope = "cluster"`).
    names: Arc<names::Names>,
    /// Which host runs each schedule tick.
    ticks: Arc<ticks::Ticks>,
    /// Durable tasks, on JetStream.
    durable: Arc<durable::DurableQueue>,
    /// Plugins rolled out to every host.
    rollout: Arc<rollout::Rollout>,
    /// Key-value state, on JetStream KV.
    kv: Arc<kv::ClusterKv>,
    /// Tasks for any host, taken by the hosts with room.
    any: Arc<any::AnyQueue>,
    /// App-scoped tasks (`scope = "app"`): which host runs each.
    singletons: Arc<singletons::Singletons>,
    /// The queues' limits, held across the hosts.
    queues: Arc<queues::SharedQueues>,
    env: Arc<TaskEnv>,
    /// What runs for the cluster: the events' bridges, the heartbeat,
    /// the durable queue's runners, the roll-out watch.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The request servers, stopped first when the host stops.
    servers: Mutex<Vec<JoinHandle<()>>>,
    /// Whether this host takes requests now (said in its heartbeat).
    serving: Arc<AtomicBool>,
    /// Wakes the heartbeat when `serving` changes.
    serving_changed: Arc<tokio::sync::Notify>,
}

/// The cluster's NATS, connected, and the backends that need no host: the
/// durable tasks' queue and the key-value store. Opened first, so the
/// host's [`Storage`](crate::storage::Storage) is whole when the host is
/// made; [`Cluster::join`] then starts the parts that run for the host.
pub struct Connection {
    config: ClusterConfig,
    client: async_nats::Client,
    connected: Arc<AtomicBool>,
    durable: Arc<durable::DurableQueue>,
    kv: Arc<kv::ClusterKv>,
    /// Queues' run-time settings, for every host.
    queue_settings: async_nats::jetstream::kv::Store,
}

impl Connection {
    /// Connects to the cluster's NATS and opens its durable queue and
    /// key-value store; `file` is the app.toml errors point at.
    pub async fn open(
        config: &ClusterConfig,
        file: &Path,
        limits: &crate::config::Limits,
    ) -> Result<Connection> {
        let connected = Arc::new(AtomicBool::new(false));
        let client = connect(config, connected.clone()).await.with_context(|| {
            format!(
                "{}: [cluster]: cannot reach NATS at {} within {} s; is nats-server running \
                 there (with -js), and are the URL and credentials right?",
                file.display(),
                config.servers.join(", "),
                CONNECT_TIMEOUT.as_secs()
            )
        })?;
        connected.store(true, Ordering::Relaxed);
        check_server_version(&client.server_info().version).with_context(|| {
            format!(
                "{}: [cluster]: the NATS server at {}",
                file.display(),
                config.servers.join(", ")
            )
        })?;
        let durable = Arc::new(
            durable::DurableQueue::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        let kv = Arc::new(kv::ClusterKv::new(
            &client,
            config,
            crate::storage::KvLimits::from(limits),
        ));
        let queue_settings = queues::ClusterQueueStore::open(&client, config)
            .await
            .with_context(|| format!("{}: [cluster]", file.display()))?;
        Ok(Connection {
            config: config.clone(),
            client,
            connected,
            durable,
            kv,
            queue_settings,
        })
    }

    /// `local` with key-value state and durable tasks on the cluster, so
    /// every host sees the one and the others outlive their host;
    /// schedules' progress stays local, since each tick is claimed in the
    /// cluster anyway ([`ticks`]).
    pub fn storage(&self, local: crate::storage::Storage) -> crate::storage::Storage {
        let queues = Arc::new(queues::ClusterQueueStore::new(
            self.queue_settings.clone(),
            local.queues().clone(),
        ));
        local
            .with(self.kv.clone(), self.durable.clone())
            .with_queues(queues)
    }
}

impl Cluster {
    /// Joins the cluster over `connection`: relays events, beats, and
    /// opens names, ticks, roll-out and the queue for any host; `file` is
    /// the app.toml errors point at.
    pub async fn join(connection: Connection, file: &Path, env: Arc<TaskEnv>) -> Result<Cluster> {
        let Connection {
            config,
            client,
            connected,
            durable,
            kv,
            queue_settings,
        } = connection;
        let config = &config;
        let mut tasks = events::bridge(&client, config, env.clone())
            .await
            .with_context(|| format!("{}: [cluster]: cannot relay events", file.display()))?;
        let members = Arc::new(members::Members::default());
        let serving = Arc::new(AtomicBool::new(false));
        let serving_changed = Arc::new(tokio::sync::Notify::new());
        tasks.extend(
            members::start(
                &client,
                config,
                env.clone(),
                members.clone(),
                serving.clone(),
                serving_changed.clone(),
            )
            .await
            .with_context(|| format!("{}: [cluster]: cannot beat", file.display()))?,
        );
        let names = Arc::new(
            names::Names::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        tasks.push(names::sweeper(names.clone(), members.clone(), env.clone()));
        let ticks = Arc::new(
            ticks::Ticks::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        let rollout = Arc::new(
            rollout::Rollout::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        let any = Arc::new(
            any::AnyQueue::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        let singletons = Arc::new(
            singletons::Singletons::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        let queues = Arc::new(
            queues::SharedQueues::open(&client, config)
                .await
                .with_context(|| format!("{}: [cluster]", file.display()))?,
        );
        tasks.extend(queues::run(queues.clone(), members.clone()));
        // Before any task runs: every queued task takes its share.
        env.queues.share(Arc::new(queues.clone()));
        tasks.push(queues::follow_settings(queue_settings, env.clone()));
        tracing::info!(
            cluster = config.name,
            host = config.host,
            "joined cluster `{}` as host `{}` (NATS {})",
            config.name,
            config.host,
            config.servers.join(", ")
        );
        Ok(Cluster {
            config: config.clone(),
            client,
            connected,
            members,
            names,
            ticks,
            durable,
            rollout,
            kv,
            any,
            singletons,
            queues,
            env,
            tasks: Mutex::new(tasks),
            servers: Mutex::default(),
            serving,
            serving_changed,
        })
    }

    /// The hosts present now (this one included once its first heartbeat
    /// came back), by name.
    pub fn hosts(&self) -> Vec<HostBeat> {
        self.members.present()
    }

    /// Answers the requests of `kind` that other hosts (or this one) send
    /// to `any`, `all` or this host, with `responder`.
    pub async fn serve(&self, kind: Kind, responder: Arc<dyn Responder>) -> Result<()> {
        let task = requests::serve(&self.client, &self.config, kind, responder.clone()).await?;
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.push(task);
        // Tasks for `any` host come from the queue, while this host has
        // room.
        if kind == Kind::Submissions {
            servers.push(any::serve(self.any.clone(), self.env.clone(), responder));
        }
        Ok(())
    }

    /// Says in this host's heartbeats that it takes requests: once every
    /// [`Cluster::serve`] is done.
    pub fn start_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
        self.serving_changed.notify_one();
    }

    /// Stops taking the other hosts' requests (the host is stopping): its
    /// subscriptions end, so `any` goes to the others at once, and its next
    /// heartbeat says it no longer serves, so `all` stops waiting for it.
    pub fn stop_serving(&self) {
        self.serving.store(false, Ordering::Relaxed);
        self.serving_changed.notify_one();
        for server in self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            server.abort();
        }
    }

    /// Sends a request of `kind` to `target` and returns the answers (one,
    /// or one per host present for `all`).
    pub async fn request(
        &self,
        kind: Kind,
        target: &Target,
        payload: bytes::Bytes,
    ) -> Result<Vec<Answer>, RequestError> {
        if kind == Kind::Submissions && *target == Target::Any {
            return Ok(vec![self.any.submit(&self.members, payload).await?]);
        }
        requests::request(
            &self.client,
            &self.config,
            &self.members,
            kind,
            target,
            payload,
        )
        .await
    }

    /// The `[cluster]` table this host joined with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether NATS is reachable now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Cluster-scoped task names.
    pub fn names(&self) -> &names::Names {
        &self.names
    }

    /// Which host runs each schedule tick.
    pub fn ticks(&self) -> Arc<ticks::Ticks> {
        self.ticks.clone()
    }

    /// The cluster's queue of durable tasks.
    pub fn durable(&self) -> Arc<durable::DurableQueue> {
        self.durable.clone()
    }

    /// Starts taking durable tasks from the queue: this host's own (to
    /// hold them while they run, or to run them again after a restart) and
    /// those of hosts gone from the cluster. Called once the workers run.
    pub fn run_durable(&self, env: Arc<TaskEnv>) {
        let runners = durable::run(self.durable.clone(), env, self.members.clone());
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(runners);
    }

    /// The cluster's key-value state.
    pub fn kv(&self) -> Arc<kv::ClusterKv> {
        self.kv.clone()
    }

    /// The cluster's store of rolled-out plugins.
    pub fn rollout(&self) -> Arc<rollout::Rollout> {
        self.rollout.clone()
    }

    /// Starts loading what is rolled out to the cluster into `sink` (the
    /// latest build of each rolled-out plugin first).
    pub fn watch_plugins(&self, sink: Arc<dyn rollout::PluginSink>) {
        let watch = rollout::watch(self.rollout.clone(), sink);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(watch);
    }

    /// Runs app-scoped task `name` on this host whenever it holds its
    /// claim, starting its copy with `start` (see [`singletons`]).
    pub fn run_singleton(&self, name: String, start: singletons::Starter) {
        self.singletons.supervise(name, start);
    }

    /// Stops claiming and renewing app-scoped tasks: the host is stopping
    /// (its copies are being cancelled; [`Cluster::leave`] frees the
    /// claims once they ended).
    pub fn stop_singletons(&self) {
        self.singletons.stop();
    }

    /// Frees this host's names, singletons' claims and queue slots, sends
    /// what is queued (a bounded wait), then stops relaying.
    pub async fn leave(&self) {
        let _ = tokio::time::timeout(LEAVE_FLUSH, self.names.release_all()).await;
        let _ = tokio::time::timeout(LEAVE_FLUSH, self.singletons.release_all()).await;
        let _ = tokio::time::timeout(LEAVE_FLUSH, self.queues.free_mine()).await;
        let _ = tokio::time::timeout(LEAVE_FLUSH, self.client.flush()).await;
        self.stop();
    }

    fn stop(&self) {
        self.stop_serving();
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The oldest nats-server a cluster runs on: key-value batches need its
/// atomic batch publish, and async-nats 0.51 cannot open a KV bucket on
/// 2.9 (Debian 12's 2.9.10 was tried).
const MIN_SERVER: (u64, u64) = (2, 12);

/// Refuses a server older than [`MIN_SERVER`], saying which it is.
fn check_server_version(version: &str) -> Result<()> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_SERVER => Ok(()),
        _ => anyhow::bail!(
            "is nats-server {version}; taskhost's cluster needs {}.{} or later (tested with \
             2.15.1; `scripts/setup-nats` installs it)",
            MIN_SERVER.0,
            MIN_SERVER.1
        ),
    }
}

/// A client connected to the cluster's NATS, which keeps `connected`
/// current and logs its connection's ups and downs.
async fn connect(config: &ClusterConfig, connected: Arc<AtomicBool>) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("taskhost {}/{}", config.name, config.host))
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        connected.store(true, Ordering::Relaxed);
                        tracing::info!("NATS connection back");
                    }
                    async_nats::Event::Disconnected => {
                        connected.store(false, Ordering::Relaxed);
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    other => tracing::warn!("NATS: {other}"),
                }
            }
        });
    options = match &config.auth {
        ClusterAuth::None => options,
        ClusterAuth::Credentials(path) => options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read the NATS credentials {}", path.display()))?,
        ClusterAuth::Token(token) => options.token(token.clone()),
        ClusterAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.clone())
        }
    };
    if config.tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let servers = config
        .servers
        .iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("`{url}` is not a NATS server address"))
        })
        .collect::<Result<Vec<_>>>()?;
    let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(servers))
        .await
        .context("timed out")??;
    Ok(client)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_server_older_than_2_12_is_refused_by_its_version() {
        for old in ["2.9.10", "2.11.4", "1.4.1", "", "garbage"] {
            let error = super::check_server_version(old).unwrap_err().to_string();
            assert!(error.contains("needs 2.12 or later"), "{old}: {error}");
        }
        for new in ["2.12.0", "2.15.1", "3.0.0-beta"] {
            super::check_server_version(new).unwrap();
        }
    }
}
