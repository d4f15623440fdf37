//! What tracing costs (`[telemetry]`, issue 29): trivial tasks per second
//! on 2 workers with every trace sampled and exported to an OTLP/HTTP sink
//! on loopback, against the same host without `[telemetry]`, in
//! alternating rounds of one run. The sink decodes each post, so the row
//! also says how many spans arrived.

use super::{Components, launch, median, scaled, throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use taskhost::config::AppConfig;

/// An OTLP/HTTP sink on loopback: counts the spans it is sent.
async fn sink() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let spans = Arc::new(AtomicU64::new(0));
    let counted = spans.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("sink");
    let address = listener.local_addr().expect("sink address");
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let n: usize = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                counted.fetch_add(n as u64, Ordering::Relaxed);
                ""
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, spans)
}

fn config(
    components: &Components,
    storage: &Path,
    otlp: Option<std::net::SocketAddr>,
) -> AppConfig {
    let telemetry = otlp
        .map(|otlp| format!("[telemetry]\notlp = \"http://{otlp}\"\nsample = 1.0\n"))
        .unwrap_or_default();
    let text = format!(
        "name = \"speed\"\nworkers = 2\n\
         [storage]\npath = {:?}\n\
         [plugins.bench]\npath = {:?}\n{telemetry}",
        storage.display().to_string(),
        components.bench.display().to_string(),
    );
    AppConfig::parse(&text, Path::new("speed.toml"), Path::new(".")).expect("config")
}

pub(crate) async fn run(components: &Components) {
    let (otlp, spans) = sink().await;
    let (off_dir, on_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let off = launch(config(components, off_dir.path(), None)).await;
    let on = launch(config(components, on_dir.path(), Some(otlp))).await;
    println!("| measure | tracing on | tracing off | ratio | target |");
    println!("|---|---|---|---|---|");
    // Warm both up, then alternate, so a machine that slows down or speeds
    // up during the run shifts both sides alike.
    throughput(&off, 2, scaled(5_000)).await;
    throughput(&on, 2, scaled(5_000)).await;
    let n = scaled(100_000) / 3;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let before = spans.load(Ordering::Relaxed);
    for _ in 0..5 {
        without.push(throughput(&off, 2, n).await);
        with.push(throughput(&on, 2, n).await);
    }
    let (with, without) = (median(with), median(without));
    // The last batch leaves within `batch_ms` of its tasks' ends.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let arrived = spans.load(Ordering::Relaxed) - before;
    println!(
        "| trivial tasks/s, 2 workers, every trace sampled and exported ({arrived} spans of \
         {} tasks arrived) | {with:.0} | {without:.0} | {:.2}x | at most 5% slower (0.95x) |",
        5 * n,
        with / without
    );
}
