//! The control state file: where a running host tells its CLI the address
//! and token of its control API. Only the host's user can read it.

use crate::private_files::{create_private_dir, hex, open_nofollow, write_atomically};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Env var naming the state file, for `taskhost run` and the CLI verbs.
pub(super) const STATE_FILE_ENV: &str = "TASKHOST_CONTROL_FILE";

/// What the state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlState {
    /// Where the control API listens: `host:port`, or `unix:PATH`.
    pub address: String,
    /// The bearer token every request needs.
    pub token: String,
    /// A token that may only read (GET requests, the event stream, the
    /// dashboard without its actions): for a team that looks without
    /// steering. Absent in the files of hosts older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_token: Option<String>,
    /// The host's process: with the token, how a reader tells a live host
    /// from the stale file of a crashed one.
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
pub(super) fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for the token: {e}"))?;
    Ok(hex(&bytes))
}

impl ControlState {
    /// Writes the file readable by its owner only, atomically
    /// (`write_atomically`: never into an existing file or a planted
    /// symlink). A directory where other users could replace the file is
    /// refused.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        check_dir(dir)?;
        let text = serde_json::to_string_pretty(self)?;
        write_atomically(path, ".control.", &[text.as_bytes()])
    }

    /// Whether a live host of this file's still serves there: its process
    /// exists and it answers a request made with this file's token. A bare
    /// connect is not enough: after a crash the port may belong to anyone.
    pub async fn is_alive(&self) -> bool {
        #[cfg(unix)]
        {
            let alive = rustix::process::Pid::from_raw(self.pid as i32)
                .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
            if !alive {
                return false;
            }
        }
        let Ok(client) = super::client::Client::from_state(self) else {
            return false;
        };
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                client.call(&super::routes::PLUGINS, &[], &())
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// Reads a state file, trusting it only if it is this user's and
    /// nobody else's to read: it holds the token, and a planted one could
    /// point the CLI at another process.
    pub fn read(path: &Path) -> Result<ControlState> {
        let no_host = || {
            format!(
                "no running host found: cannot read {} (start one with `taskhost run`, or point \
                 --control-file / {STATE_FILE_ENV} at its state file)",
                path.display()
            )
        };
        let mut file = open_nofollow(path).with_context(no_host)?;
        let meta = file.metadata().with_context(no_host)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let me = rustix::process::geteuid().as_raw();
            if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
                bail!(
                    "not trusting the control file {}: it must be a regular file of this \
                     user's (uid {me}) that nobody else can read, and it is mode {:04o}, uid {}",
                    path.display(),
                    meta.mode() & 0o7777,
                    meta.uid()
                );
            }
        }
        let mut text = String::new();
        use std::io::Read;
        Read::by_ref(&mut file)
            .take(64 * 1024)
            .read_to_string(&mut text)
            .with_context(no_host)?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a control state file", path.display()))
    }
}

/// Refuses a directory where another user could replace the control file:
/// writable by its group or others, unless sticky (like /tmp, where only a
/// file's owner may rename or remove it).
fn check_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            bail!(
                "refusing to write the control file in {}: other users can write there \
                 (mode {:04o}) and could replace it; `chmod go-w {}`, or choose a private \
                 place with --control-file (or {STATE_FILE_ENV})",
                dir.display(),
                mode & 0o7777,
                dir.display()
            );
        }
    }
    Ok(())
}
