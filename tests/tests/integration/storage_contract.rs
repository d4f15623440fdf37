//! The storage backends' contract (`taskhost::storage::contract`), run
//! against the cluster's backends on a real `nats-server`: key-value state
//! on JetStream KV and durable tasks on the JetStream queue. The SQLite
//! backend runs the same suite in the host crate's unit tests.

use taskhost::config::AppConfig;
use taskhost::storage::{SqliteStore, Storage, contract};
use taskhost_tests::NatsServer;

#[test]
fn the_jetstream_backends_keep_the_storage_contract() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let limits = contract::KV_LIMITS;
    let text = format!(
        r#"
        name = "contract"
        [limits]
        kv_key_bytes = {}
        kv_value_bytes = {}
        kv_keys_per_bucket = {}
        kv_bytes_per_plugin = {}
        [cluster]
        nats = "{}"
        name = "contract"
        host = "a"
        "#,
        limits.key_bytes,
        limits.value_bytes,
        limits.keys_per_bucket,
        limits.bytes_per_plugin,
        nats.url
    );
    let file = dir.path().join("app.toml");
    let config = AppConfig::parse(&text, &file, dir.path()).expect("the app.toml parses");
    let cluster = config.cluster.as_ref().expect("a [cluster]");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = taskhost::cluster::Connection::open(cluster, &file, &config.limits)
            .await
            .expect("NATS is reachable");
        let local = Storage::sqlite(SqliteStore::in_memory(limits).unwrap());
        let storage = connection.storage(local);
        contract::kv(&**storage.kv()).await;
        contract::tasks(&**storage.tasks()).await;
        contract::journals(&**storage.tasks()).await;
    });
}
