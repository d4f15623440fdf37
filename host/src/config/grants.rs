//! `[plugins.NAME.grants]`: what WASI may reach beyond stdout and stderr.
//!
//! WASI is deny-by-default: a plugin with no grants sees no files, no
//! environment, no stdin and no network. A grant names exactly what is
//! opened up, so reading app.toml tells an operator everything a plugin
//! can touch. Tasks reach the network only through outbound HTTP
//! (`wasi:http`), to the origins `http` lists, and through TCP sockets
//! (`wasi:sockets`), to the addresses `tcp` lists; never UDP, and never a
//! socket that listens.
//! Key-value buckets of the plugin's own need no grant; `kv` names the
//! shared buckets it may open too.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What one plugin's tasks may reach through WASI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories, each visible to the guest at its own path.
    pub dirs: Vec<DirGrant>,
    /// Names of host environment variables the guest may read; each gets
    /// the host's value when the task first uses WASI (absent ones stay
    /// absent).
    pub env: Vec<String>,
    /// Whether tasks read the host's stdin.
    pub stdin: bool,
    /// Origins tasks may send HTTP requests to (`wasi:http`); none by
    /// default. See [`super::HttpGrant`] for the grammar.
    pub http: Vec<super::HttpGrant>,
    /// Addresses tasks may open TCP connections to (`wasi:sockets`); none
    /// by default. See [`super::SocketGrant`] for the grammar.
    pub tcp: Vec<super::SocketGrant>,
    /// Shared key-value buckets tasks may open by name, besides the
    /// plugin's own buckets (which need no grant).
    pub kv: Vec<String>,
}

/// One granted directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The host directory, resolved against app.toml's directory.
    pub host: PathBuf,
    /// Where the guest sees it (`/data`).
    pub guest: String,
    /// Whether the guest may create, change and remove files in it.
    pub write: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrants {
    #[serde(default)]
    dirs: Vec<RawDir>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    tcp: Vec<String>,
    #[serde(default)]
    kv: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    host: PathBuf,
    guest: String,
    #[serde(default)]
    write: bool,
}

impl RawGrants {
    /// Checks the grants of `[plugins.NAME.grants]` (named by `table`),
    /// resolving directories against `base`. A granted directory must exist
    /// now: finding out when a task first touches it would be too late.
    pub(super) fn checked(self, table: &str, base: &Path) -> Result<Grants> {
        let mut dirs = Vec::new();
        let mut guests = HashSet::new();
        for (index, dir) in self.dirs.into_iter().enumerate() {
            let at = format!("{table} dirs[{index}]");
            if !dir.guest.starts_with('/') {
                bail!(
                    "{at}: `guest` must be an absolute path such as \"/data\", got {:?}",
                    dir.guest
                );
            }
            if !guests.insert(dir.guest.clone()) {
                bail!("{at}: guest path {:?} is granted twice", dir.guest);
            }
            let host = base.join(&dir.host);
            if !host.is_dir() {
                bail!("{at}: host directory {} does not exist", host.display());
            }
            dirs.push(DirGrant {
                host,
                guest: dir.guest,
                write: dir.write,
            });
        }
        for (index, name) in self.env.iter().enumerate() {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                bail!("{table} env[{index}]: {name:?} is not an environment variable name");
            }
        }
        let http = self
            .http
            .iter()
            .enumerate()
            .map(|(index, origin)| {
                origin
                    .parse()
                    .map_err(|error| anyhow::anyhow!("{table} http[{index}]: {error}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut tcp = Vec::new();
        for (index, address) in self.tcp.iter().enumerate() {
            let grant: super::SocketGrant = address
                .parse()
                .map_err(|error| anyhow::anyhow!("{table} tcp[{index}]: {error}"))?;
            if tcp.contains(&grant) {
                bail!("{table} tcp[{index}]: {grant} is granted twice");
            }
            tcp.push(grant);
        }
        let mut shared = HashSet::new();
        for (index, bucket) in self.kv.iter().enumerate() {
            super::check_bucket_name(bucket)
                .map_err(|error| anyhow::anyhow!("{table} kv[{index}]: {error}"))?;
            if !shared.insert(bucket) {
                bail!("{table} kv[{index}]: bucket {bucket:?} is granted twice");
            }
        }
        Ok(Grants {
            dirs,
            env: self.env,
            stdin: self.stdin,
            http,
            tcp,
            kv: self.kv,
        })
    }
}

impl Grants {
    /// Whether anything beyond the default (stdout and stderr) is granted.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
            && self.env.is_empty()
            && !self.stdin
            && self.http.is_empty()
            && self.tcp.is_empty()
            && self.kv.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Grants> {
        let raw: RawGrants = toml::from_str(text).unwrap();
        raw.checked("app.toml: [plugins.p.grants]", &std::env::temp_dir())
    }

    #[test]
    fn a_relative_guest_path_or_a_missing_host_dir_is_refused() {
        let err = check("dirs = [{ host = \".\", guest = \"data\" }]").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("app.toml: [plugins.p.grants] dirs[0]: `guest` must be an absolute")
        );
        let err = check("dirs = [{ host = \"no-such-dir-here\", guest = \"/d\" }]").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn grants_default_to_nothing() {
        let grants = check("").unwrap();
        assert!(grants.is_empty());
        let grants = check("env = [\"LANG\"]\nstdin = true").unwrap();
        assert_eq!(grants.env, vec!["LANG".to_string()]);
        assert!(grants.stdin);
    }
}
