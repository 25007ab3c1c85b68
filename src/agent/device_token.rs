//! The device token a gateway (clawnode's or OpenClaw's) issues after
//! pairing (`hello-ok.auth.deviceToken`), kept in
//! `<state-dir>/device-token.json` (0600, written atomically) for the
//! gateway URL, device and role it was issued to. The agent presents it on
//! every connect (`connect.params.auth.deviceToken`), with the join token
//! when it has one and alone when it has not (see `super::run`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::Secret;
use crate::state_file;

pub const DEVICE_TOKEN_FILE: &str = "device-token.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    url: String,
    device_id: String,
    role: String,
    token: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Reads and writes the stored device token.
#[derive(Debug, Clone)]
pub struct DeviceTokenStore {
    path: PathBuf,
}

impl DeviceTokenStore {
    pub fn new(state_dir: &Path) -> Self {
        DeviceTokenStore {
            path: state_dir.join(DEVICE_TOKEN_FILE),
        }
    }

    fn read(&self) -> Option<Record> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the stored device token; ignoring it");
                return None;
            }
        };
        match serde_json::from_str(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "stored device token is not valid JSON; ignoring it (it is replaced when the gateway issues a new one)");
                None
            }
        }
    }

    /// The token stored for this gateway, device and role.
    pub fn get(&self, url: &str, device_id: &str, role: &str) -> Option<Secret> {
        self.read()
            .filter(|r| r.url == url && r.device_id == device_id && r.role == role)
            .map(|r| Secret::new(r.token))
    }

    /// Whether a token is stored for `url` (any device and role): the agent
    /// may start without a join token.
    pub fn has_token_for(&self, url: &str) -> bool {
        self.read()
            .is_some_and(|r| r.url == url && !r.token.is_empty())
    }

    /// Drops the token stored for this gateway, device and role (the
    /// gateway refused it: rotated or revoked). Best effort, logged.
    pub fn forget(&self, url: &str, device_id: &str, role: &str) {
        let stored = self.read();
        if !stored.is_some_and(|r| r.url == url && r.device_id == device_id && r.role == role) {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                warn!(path = %self.path.display(), "dropped the device token the gateway refused")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot remove the refused device token")
            }
        }
    }

    /// Stores a token from `hello-ok` when it is new or different.
    pub fn remember(&self, url: &str, device_id: &str, role: &str, token: &str, scopes: &[String]) {
        if let Some(r) = self.read() {
            if r.url == url && r.device_id == device_id && r.role == role && r.token == token {
                return;
            }
        }
        let record = Record {
            url: url.to_string(),
            device_id: device_id.to_string(),
            role: role.to_string(),
            token: token.to_string(),
            scopes: scopes.to_vec(),
        };
        let text = match serde_json::to_string_pretty(&record) {
            Ok(t) => t,
            Err(_) => return,
        };
        if let Err(e) = state_file::write_atomic(&self.path, text.as_bytes()) {
            warn!(path = %self.path.display(), error = %e, "cannot store the device token");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stored_per_gateway_device_and_role() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeviceTokenStore::new(dir.path());
        assert_eq!(store.get("ws://a", "d", "node"), None);
        store.remember("ws://a", "d", "node", "tok1", &[]);
        assert_eq!(store.get("ws://a", "d", "node"), Some(Secret::new("tok1")));
        assert_eq!(store.get("ws://b", "d", "node"), None);
        assert_eq!(store.get("ws://a", "other", "node"), None);
        assert_eq!(store.get("ws://a", "d", "operator"), None);
        let mode = std::fs::metadata(dir.path().join(DEVICE_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        store.remember("ws://a", "d", "node", "tok2", &[]);
        assert_eq!(store.get("ws://a", "d", "node"), Some(Secret::new("tok2")));
    }

    #[test]
    fn a_corrupt_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DEVICE_TOKEN_FILE), "{nope").unwrap();
        let store = DeviceTokenStore::new(dir.path());
        assert_eq!(store.get("ws://a", "d", "node"), None);
        store.remember("ws://a", "d", "node", "t", &[]);
        assert_eq!(store.get("ws://a", "d", "node"), Some(Secret::new("t")));
    }
}
