//! How much the compile cache saves when an application starts: loads the
//! example plugin's component with an empty cache (compiles) and with a warm
//! one (deserializes), several times each, and prints the medians.
//!
//!     cargo bench -p taskhost --bench compile_cache

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskhost::bench::AppContext;
use taskhost::config::AppConfig;
use taskhost::engine::{EngineSettings, build_engine};
use taskhost::plugin::PluginLoader;
use taskhost::plugin::build::{self, BuildOptions, BuildOutput};

const ROUNDS: usize = 7;

async fn load_once(component: &Path, cache: &Path) -> Duration {
    let settings = EngineSettings {
        compile_cache: Some(cache.to_path_buf()),
        ..EngineSettings::default()
    };
    let engine = build_engine(&settings).expect("engine");
    let config = AppConfig::parse(
        "name = \"bench\"\n",
        Path::new("bench.toml"),
        Path::new("."),
    )
    .expect("config");
    let app = Arc::new(AppContext::new(&config));
    let loader = PluginLoader::new(&engine, app).expect("loader");
    let begun = Instant::now();
    loader
        .load("examples", component)
        .await
        .expect("plugin loads");
    begun.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let options = BuildOptions {
        output: BuildOutput::Capture,
        ..BuildOptions::default()
    };
    let component = build::build(&repo.join("plugins/examples"), &options).expect("build");
    let size = std::fs::metadata(&component).map(|m| m.len()).unwrap_or(0);

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..ROUNDS {
        let cache = tempfile::tempdir().expect("temp dir");
        cold.push(load_once(&component, cache.path()).await);
        warm.push(load_once(&component, cache.path()).await);
    }
    let (cold, warm) = (median(cold), median(warm));
    println!(
        "plugin load: examples component ({} KiB), median of {ROUNDS}",
        size / 1024
    );
    println!("| cache | load time |");
    println!("|---|---|");
    println!("| cold (compiles) | {:.1} ms |", cold.as_secs_f64() * 1e3);
    println!("| warm (cached) | {:.1} ms |", warm.as_secs_f64() * 1e3);
    println!(
        "speed-up: {:.1}x",
        cold.as_secs_f64() / warm.as_secs_f64().max(f64::EPSILON)
    );
}
