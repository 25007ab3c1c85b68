//! The pins file of earlier versions (`<state-dir>/pins.json`), read once
//! to migrate it into the registry database, then renamed
//! `pins.json.migrated` (kept: it is the backup of the pins as they were).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Pin;

/// The file name in the gateway's state directory (earlier versions).
pub const PINS_FILE: &str = "pins.json";
/// What it is renamed to once its pins are in the registry.
pub const PINS_FILE_MIGRATED: &str = "pins.json.migrated";

const FILE_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    version: u32,
    pins: BTreeMap<String, FilePin>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilePin {
    device_id: String,
    pinned_at_ms: u64,
    #[serde(default)]
    display_name: Option<String>,
}

/// A pins file, read: its pins (keys lower-cased, as instance ids are
/// matched) and the SHA-256 of its bytes (recorded with the migration, so a
/// file whose rename failed is recognised as migrated already).
#[derive(Debug)]
pub struct Legacy {
    pub pins: BTreeMap<String, Pin>,
    pub digest: String,
}

/// Reads `path`; `None` when it does not exist. A damaged file is an error
/// naming it (the registry is not opened without its pins: starting without
/// them would silently drop the protection).
pub fn read(path: &Path) -> Result<Option<Legacy>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: PinsFile = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is damaged ({e}); restore it from a backup, or remove it to forget every pin \
             (each instance is then pinned again by the next key that claims it)",
            path.display()
        )
    })?;
    if file.version != FILE_VERSION {
        bail!(
            "{} has version {}, this clawnode reads version {FILE_VERSION}",
            path.display(),
            file.version
        );
    }
    let pins = file
        .pins
        .into_iter()
        .map(|(key, p)| {
            let pin = Pin {
                device_id: p.device_id,
                pinned_at_ms: p.pinned_at_ms,
                display_name: p.display_name,
            };
            (key.trim().to_lowercase(), pin)
        })
        .collect();
    let digest = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(Legacy { pins, digest }))
}
