//! Sanic's column: `sanic_bench.py` run in a venv this bench makes
//! (`target/speed-sanic-venv`, Sanic and uvloop pinned), after taskhost's
//! and raw wasmtime's figures, in the same run. Without Python, or if the
//! venv cannot be made, the column is skipped with a note.

use std::path::{Path, PathBuf};
use std::process::Command;

const SANIC: &str = "sanic==25.12.1";
const UVLOOP: &str = "uvloop==0.23.0";

/// What the script measured (see `sanic_bench.py`).
#[derive(Debug, serde::Deserialize)]
pub struct Figures {
    /// Sanic's version, as the script pins it.
    pub sanic: String,
    /// The event loop's module: `uvloop` when Sanic picked it.
    #[serde(rename = "loop")]
    pub loop_: Option<String>,
    pub spawn: Latency,
    pub burst: Rate,
    pub cancel: Latency,
    /// `await app.add_task(trivial(), name=...)`: a child started and
    /// awaited.
    pub join: Latency,
    pub idle: Memory,
}

#[derive(Debug, serde::Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
}

#[derive(Debug, serde::Deserialize)]
pub struct Rate {
    pub per_second: f64,
}

#[derive(Debug, serde::Deserialize)]
pub struct Memory {
    pub bytes_per_task: f64,
}

/// The venv's python, made (once) with Sanic and uvloop; `Err` says why not.
fn python() -> Result<PathBuf, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = repo.join("target").join("speed-sanic-venv");
    let python = venv.join("bin").join("python");
    let ready = venv.join(".installed");
    if std::fs::read_to_string(&ready).is_ok_and(|s| s == format!("{SANIC} {UVLOOP}")) {
        return Ok(python);
    }
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| format!("python3 not found ({e})"))?;
    if !status.success() {
        return Err(format!("python3 -m venv {} failed", venv.display()));
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", SANIC, UVLOOP])
        .status()
        .map_err(|e| format!("cannot run the venv's pip ({e})"))?;
    if !status.success() {
        return Err(format!("pip install {SANIC} {UVLOOP} failed"));
    }
    std::fs::write(&ready, format!("{SANIC} {UVLOOP}")).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Sanic's figures for the given workload sizes, or why there are none.
pub fn measure(spawn: usize, burst: usize, cancel: usize, idle: usize) -> Result<Figures, String> {
    let python = python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/speed/sanic_bench.py");
    // The join workload is as many as the cancels: the two rows sit
    // side by side.
    let counts = serde_json::json!({
        "spawn": spawn, "burst": burst, "cancel": cancel, "join": cancel, "idle": idle,
    });
    let out = Command::new(python)
        .arg(script)
        .arg(counts.to_string())
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .map_err(|e| format!("cannot run sanic_bench.py ({e})"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    if !out.status.success() {
        return Err(format!(
            "sanic_bench.py failed: {last}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(last).map_err(|e| format!("sanic_bench.py printed {last:?}: {e}"))
}
