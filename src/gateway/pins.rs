//! Identity pinning: the gateway remembers which device key first claimed
//! each `instanceId`, so a host holding the shared token (or a compromised
//! one) cannot take over another host's presence row by claiming its
//! instance id. A different key claiming a pinned id is refused with
//! `INSTANCE_ID_PINNED` until an operator runs `clawnode forget <id>`.
//!
//! Pins live in memory and in `<state-dir>/pins.json`. New pins are written
//! by a background task shortly after they are made (one atomic write for a
//! whole burst of first connections, never on the handshake path); forgets
//! are written at once. Keys are lowercase, as instance ids are matched
//! case-insensitively everywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::state_file;

/// The file name in the gateway's state directory.
pub const PINS_FILE: &str = "pins.json";
/// New pins are written this long after the first of a burst.
const WRITE_DELAY: Duration = Duration::from_millis(200);

/// One pinned instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pin {
    /// The device id (SHA-256 of the public key) that first claimed it.
    pub device_id: String,
    pub pinned_at_ms: u64,
    /// The host name it connected with, to help an operator recognise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    version: u32,
    pins: BTreeMap<String, Pin>,
}

const FILE_VERSION: u32 = 1;

/// What [`PinStore::check`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// Nothing to pin (no instance id, or no device key to pin it to).
    Unpinned,
    /// The instance id is pinned to this device.
    Known,
    /// First claim: pinned to this device now.
    New,
    /// Pinned to another device: refuse.
    Conflict(Pin),
}

/// The pins, shared by every handler and the writer task.
#[derive(Debug)]
pub struct PinStore {
    path: Option<PathBuf>,
    state: Mutex<State>,
    dirty: Notify,
}

#[derive(Debug, Default)]
struct State {
    pins: BTreeMap<String, Pin>,
    /// Changed since the last write.
    dirty: bool,
}

impl PinStore {
    /// Pins kept in memory only (tests, embedded gateways).
    pub fn in_memory() -> PinStore {
        PinStore {
            path: None,
            state: Mutex::new(State::default()),
            dirty: Notify::new(),
        }
    }

    /// Loads `path` (missing is empty). A damaged file is an error naming
    /// it: starting without the pins would silently drop the protection.
    pub fn load(path: &Path) -> Result<PinStore> {
        let pins = read_file(path)?;
        Ok(PinStore {
            path: Some(path.to_path_buf()),
            state: Mutex::new(State { pins, dirty: false }),
            dirty: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is one map operation; a poisoned lock holds no
        // half-made change.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a connection's claim to `instance_id`, pinning it to
    /// `device_id` if nobody holds it yet.
    pub fn check(
        &self,
        instance_id: Option<&str>,
        device_id: Option<&str>,
        display_name: Option<&str>,
        now_ms: u64,
    ) -> PinCheck {
        let Some(instance_id) = instance_id.map(str::trim).filter(|s| !s.is_empty()) else {
            return PinCheck::Unpinned;
        };
        let key = instance_id.to_lowercase();
        let mut state = self.lock();
        match (state.pins.get(&key), device_id) {
            (Some(pin), Some(device)) if pin.device_id == device => PinCheck::Known,
            // A pinned id claimed by another key, or by no key at all.
            (Some(pin), _) => PinCheck::Conflict(pin.clone()),
            (None, None) => PinCheck::Unpinned,
            (None, Some(device)) => {
                state.pins.insert(
                    key,
                    Pin {
                        device_id: device.to_string(),
                        pinned_at_ms: now_ms,
                        display_name: display_name.map(str::to_string),
                    },
                );
                state.dirty = true;
                drop(state);
                self.dirty.notify_one();
                PinCheck::New
            }
        }
    }

    /// Removes a pin and writes the file at once. Returns the pin removed.
    pub fn forget(&self, instance_id: &str) -> Result<Option<Pin>> {
        let key = instance_id.trim().to_lowercase();
        let mut state = self.lock();
        let removed = state.pins.remove(&key);
        if removed.is_some() {
            state.dirty = true;
            drop(state);
            self.flush()?;
        }
        Ok(removed)
    }

    pub fn get(&self, instance_id: &str) -> Option<Pin> {
        self.lock()
            .pins
            .get(&instance_id.trim().to_lowercase())
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().pins.len()
    }

    /// Whether `device_id` holds a pin: a device this gateway has let in
    /// before. (A scan; asked only for a rate-limited address. The device
    /// registry of part 10 answers it from an index.)
    pub fn has_device(&self, device_id: &str) -> bool {
        self.lock().pins.values().any(|p| p.device_id == device_id)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the pins if they changed. The file is replaced atomically;
    /// on failure the pins stay marked as changed for the next attempt.
    pub fn flush(&self) -> Result<()> {
        let Some(path) = &self.path else {
            self.lock().dirty = false;
            return Ok(());
        };
        let text = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            serialize(&state.pins)
        };
        state_file::write_atomic(path, text.as_bytes()).map_err(|e| {
            self.lock().dirty = true;
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        })
    }

    /// The writer task: writes new pins shortly after they appear, and once
    /// more when the gateway stops.
    pub async fn run_writer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_write = Duration::ZERO;
        loop {
            tokio::select! {
                _ = self.dirty.notified() => {}
                _ = stop.changed() => break,
            }
            // Writes are batched: at least WRITE_DELAY apart, and at least
            // four times as long apart as the last write took, so a flood of
            // new devices (a fleet's first start, a benchmark) costs the
            // handshakes that wait on the pins lock at most a fifth of it.
            tokio::select! {
                _ = tokio::time::sleep(WRITE_DELAY.max(last_write * 4)) => {}
                _ = stop.changed() => break,
            }
            let store = self.clone();
            let started = std::time::Instant::now();
            let written = tokio::task::spawn_blocking(move || store.flush()).await;
            last_write = started.elapsed();
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot save instance pins; will retry with the next change")
                }
                Err(e) => warn!(error = %e, "pin writer failed"),
            }
        }
        let store = self.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
            warn!(error = %e, "cannot save instance pins on shutdown");
        }
    }
}

fn serialize(pins: &BTreeMap<String, Pin>) -> String {
    // Borrowed, not cloned: this runs under the pins lock.
    #[derive(Serialize)]
    struct PinsFileRef<'a> {
        version: u32,
        pins: &'a BTreeMap<String, Pin>,
    }
    let file = PinsFileRef {
        version: FILE_VERSION,
        pins,
    };
    // Plain strings and numbers: serialization cannot fail.
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

fn read_file(path: &Path) -> Result<BTreeMap<String, Pin>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: PinsFile = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is damaged ({e}); restore it from a backup, or remove it to forget every pin \
             (each instance is then pinned again by the next key that claims it)",
            path.display()
        )
    })?;
    if file.version != FILE_VERSION {
        anyhow::bail!(
            "{} has version {}, this clawnode reads version {FILE_VERSION}",
            path.display(),
            file.version
        );
    }
    Ok(file
        .pins
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect())
}

/// Removes a pin from the file directly, for `clawnode forget` when no
/// gateway is running on this host.
pub fn forget_offline(path: &Path, instance_id: &str) -> Result<Option<Pin>> {
    let store = PinStore::load(path)?;
    store.forget(instance_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_key_wins_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        let store = PinStore::load(&path).unwrap();
        assert_eq!(
            store.check(Some("ID-1"), Some("key-a"), Some("web-1"), 5),
            PinCheck::New
        );
        assert_eq!(
            store.check(Some("id-1"), Some("key-a"), None, 6),
            PinCheck::Known
        );
        let PinCheck::Conflict(pin) = store.check(Some("Id-1"), Some("key-b"), None, 7) else {
            panic!("a second key must be refused");
        };
        assert_eq!(pin.device_id, "key-a");
        assert_eq!(pin.display_name.as_deref(), Some("web-1"));
        assert!(store.has_device("key-a") && !store.has_device("key-b"));
        // A pinned id claimed without any key is refused too.
        assert!(matches!(
            store.check(Some("id-1"), None, None, 8),
            PinCheck::Conflict(_)
        ));
        // No id or no key and no pin: nothing to decide.
        assert_eq!(
            store.check(None, Some("key-a"), None, 8),
            PinCheck::Unpinned
        );
        assert_eq!(store.check(Some("id-2"), None, None, 8), PinCheck::Unpinned);

        store.flush().unwrap();
        let reloaded = PinStore::load(&path).unwrap();
        assert_eq!(reloaded.get("ID-1").unwrap().device_id, "key-a");
        assert_eq!(reloaded.forget("id-1").unwrap().unwrap().device_id, "key-a");
        // Forgetting is written at once.
        assert!(PinStore::load(&path).unwrap().is_empty());
        assert_eq!(
            reloaded.check(Some("id-1"), Some("key-b"), None, 9),
            PinCheck::New
        );
    }

    #[test]
    fn damaged_file_is_an_error_naming_it_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        std::fs::write(&path, "{\"version\":1,\"pins\":{\"x\":").unwrap();
        let err = PinStore::load(&path).unwrap_err().to_string();
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"version\":1,\"pins\":{\"x\":"
        );
    }

    #[tokio::test]
    async fn writer_saves_new_pins_and_flushes_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PINS_FILE);
        let store = Arc::new(PinStore::load(&path).unwrap());
        let (tx, rx) = watch::channel(false);
        let writer = tokio::spawn(store.clone().run_writer(rx));
        store.check(Some("a"), Some("k1"), None, 1);
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(PinStore::load(&path).unwrap().len(), 1);
        store.check(Some("b"), Some("k2"), None, 2);
        tx.send(true).unwrap();
        writer.await.unwrap();
        assert_eq!(PinStore::load(&path).unwrap().len(), 2);
    }
}
