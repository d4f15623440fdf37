//! The control state file: where a running host tells its CLI the address
//! and token of its control API. Only the host's user can read it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Env var naming the state file, for `taskhost run` and the CLI verbs.
pub const STATE_FILE_ENV: &str = "TASKHOST_CONTROL_FILE";

/// What the state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlState {
    /// Where the control API listens: `host:port`, or `unix:PATH`.
    pub address: String,
    /// The bearer token every request needs.
    pub token: String,
    pub pid: u32,
    /// The application's name.
    pub app: String,
}

/// `$TASKHOST_CONTROL_FILE`, else `<cache home>/control.json`.
pub fn default_state_file() -> Result<PathBuf> {
    match std::env::var_os(STATE_FILE_ENV) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Ok(crate::dirs::cache_home()?.join("control.json")),
    }
}

/// 32 random bytes, hex.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl ControlState {
    /// Writes the file readable by its owner only, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp = dir.join(format!(".control.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(self)?;
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            file.write_all(text.as_bytes())?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Whether something still answers at the address (a crashed host
    /// leaves a stale file behind).
    pub fn is_alive(&self) -> bool {
        self.address
            .parse::<super::ControlAddress>()
            .is_ok_and(|address| address.is_alive())
    }

    pub fn read(path: &Path) -> Result<ControlState> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "no running host found: cannot read {} (start one with `taskhost run`, or point \
                 --control-file / {STATE_FILE_ENV} at its state file)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a control state file", path.display()))
    }
}
