//! What tracing costs (`[telemetry]`, issue 29): trivial tasks per second
//! on 2 workers with every trace sampled and exported to an OTLP/HTTP sink
//! on loopback, against the same host without `[telemetry]`, in
//! alternating rounds of one run. The sink keeps each post and decodes
//! them once the rounds are over (a collector runs elsewhere: its decoding
//! is not the host's cost, and on this 2-core machine it would take the
//! workers' CPU), so the row also says how many spans arrived.

use super::{Components, launch, median, scaled, throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::path::Path;
use std::sync::Arc;
use taskhost::config::AppConfig;

/// The posts an OTLP/HTTP sink was sent, not decoded yet.
type Posts = Arc<std::sync::Mutex<Vec<axum::body::Bytes>>>;

/// The spans in `posts`, decoded: the sink's count of what arrived.
fn spans_in(posts: &Posts) -> u64 {
    let posts = posts.lock().unwrap();
    posts
        .iter()
        .map(|body| {
            let request = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
            request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum::<u64>()
        })
        .sum()
}

/// An OTLP/HTTP sink on loopback: keeps the posts it is sent.
async fn sink() -> (std::net::SocketAddr, Posts) {
    let posts = Posts::default();
    let kept = posts.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("sink");
    let address = listener.local_addr().expect("sink address");
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                ""
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, posts)
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
    let before = spans_in(&spans);
    for _ in 0..5 {
        without.push(throughput(&off, 2, n).await);
        with.push(throughput(&on, 2, n).await);
    }
    let (with, without) = (median(with), median(without));
    // The last batch leaves within `batch_ms` of its tasks' ends.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let arrived = spans_in(&spans) - before;
    println!(
        "| trivial tasks/s, 2 workers, every trace sampled and exported ({arrived} spans of \
         {} tasks arrived) | {with:.0} | {without:.0} | {:.2}x | at most 5% slower (0.95x) |",
        5 * n,
        with / without
    );
}
