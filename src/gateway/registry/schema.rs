//! The registry database's schema, its migrations (`PRAGMA user_version`)
//! and the one-time import of an earlier version's `pins.json`.
//!
//! Version 1 holds what part 10's device records need, so that part adds
//! behaviour, not a table rebuild: `devices` (one row per device that proved
//! its key: public key, state, roles, first and last seen, last address,
//! host name, operator label, who approved it and when) and `instances`
//! (presence key → the device that claimed it). Issue 15 writes every
//! device as `approved` (admission by the shared token, today's policy) and
//! leaves `label` and `approved_by` empty.
//!
//! Version 2 (issue 16, part 6) adds `join_tokens` (created join tokens:
//! the SHA-256 of each secret, never the secret, unique and so indexed;
//! lifetime, uses, who made it, revocation) and `devices.join_token_id`
//! (the created join token a device enrolled with). Version 3 (part 5)
//! adds `device_tokens` (one per device and role, as a SHA-256). Each
//! version is one step applied in order ([`STEPS`]), in the one migration
//! transaction.

use anyhow::{bail, Context as _, Result};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

use super::pins_file::Legacy;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i64 = 3;

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY NOT NULL,
    -- base64url Ed25519 key; NULL for a device migrated from pins.json
    -- until it connects again
    public_key     TEXT,
    state          TEXT NOT NULL DEFAULT 'approved'
                   CHECK (state IN ('pending', 'approved', 'rejected', 'revoked')),
    -- JSON array of the roles it connected with
    roles          TEXT NOT NULL DEFAULT '[]',
    display_name   TEXT,
    label          TEXT,
    first_seen_ms  INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL,
    last_address   TEXT,
    approved_by    TEXT,
    approved_at_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE instances (
    -- the presence key: trimmed, lower-cased
    instance_id    TEXT PRIMARY KEY NOT NULL,
    device_id      TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    display_name   TEXT,
    claimed_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX instances_by_device ON instances (device_id);
CREATE TABLE meta (
    key            TEXT PRIMARY KEY NOT NULL,
    value          TEXT NOT NULL
) WITHOUT ROWID;
";

const SCHEMA_V2: &str = "
CREATE TABLE join_tokens (
    id             TEXT PRIMARY KEY NOT NULL,
    -- SHA-256 of the secret (32 bytes); the secret itself is never stored
    token_sha256   BLOB NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    description    TEXT,
    created_at_ms  INTEGER NOT NULL,
    created_by     TEXT,
    expires_at_ms  INTEGER NOT NULL,
    uses           INTEGER NOT NULL CHECK (uses > 0),
    used           INTEGER NOT NULL DEFAULT 0,
    last_used_ms   INTEGER,
    revoked_at_ms  INTEGER
) WITHOUT ROWID;
ALTER TABLE devices ADD COLUMN join_token_id TEXT;
";

/// Version 3 (issue 16, part 5): device tokens, one per device and role,
/// stored as their SHA-256 (the token itself is only ever in the
/// `hello-ok` that issued it). `token_sha256` is NULL once the token was
/// revoked, or rotated without an in-band replacement: the device gets a
/// new one on its next connect with another credential.
const SCHEMA_V3: &str = "
CREATE TABLE device_tokens (
    device_id      TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    role           TEXT NOT NULL CHECK (role IN ('node', 'operator')),
    -- lower-case hex SHA-256 of the token; NULL: none valid now
    token_sha256   TEXT,
    -- JSON array: the scopes the token grants (operator tokens)
    scopes         TEXT NOT NULL DEFAULT '[]',
    issued_at_ms   INTEGER NOT NULL,
    rotated_at_ms  INTEGER,
    revoked_at_ms  INTEGER,
    PRIMARY KEY (device_id, role)
) WITHOUT ROWID;
";

/// Schema version `n + 1` is made from version `n` by `STEPS[n]`.
const STEPS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// The `meta` key recording the digest of the pins file imported.
const PINS_IMPORTED: &str = "pins_json_sha256";

/// Brings the database to [`SCHEMA_VERSION`] in one transaction. A
/// database from a newer clawnode is an error (never written over).
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // Each step brings version N to N + 1, in order, in this transaction.
    match version {
        0..SCHEMA_VERSION => {
            for (from, step) in STEPS.iter().enumerate().skip(version as usize) {
                tx.execute_batch(step).with_context(|| {
                    format!(
                        "cannot bring the registry from schema version {from} to {}",
                        from + 1
                    )
                })?;
            }
        }
        SCHEMA_VERSION => return Ok(()),
        newer if newer > SCHEMA_VERSION => bail!(
            "it has schema version {newer}, made by a newer clawnode (this one reads \
             {SCHEMA_VERSION}); run that version, or restore the registry from a backup"
        ),
        other => bail!("it has an unknown schema version {other}"),
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Whether the pins file with this digest was imported already.
pub fn imported(conn: &Connection, digest: &str) -> Result<bool> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [PINS_IMPORTED],
            |r| r.get(0),
        )
        .optional()?;
    Ok(stored.as_deref() == Some(digest))
}

/// Imports every pin of `legacy` in one transaction: all of them or none.
/// A device gets the earliest pin time as its first seen, and no public
/// key until it connects again. Pins already in the database win (an
/// import is never repeated; this only matters for a file restored by
/// hand). Returns how many pins were added.
pub fn import_pins(conn: &mut Connection, legacy: &Legacy) -> Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut added = 0;
    {
        let mut device = tx.prepare(
            "INSERT INTO devices (device_id, display_name, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (device_id) DO UPDATE SET
                first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
                display_name = coalesce(display_name, excluded.display_name)",
        )?;
        let mut pin = tx.prepare(
            "INSERT OR IGNORE INTO instances (instance_id, device_id, display_name, claimed_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (key, p) in &legacy.pins {
            let at = p.pinned_at_ms as i64;
            device.execute(params![p.device_id, p.display_name, at])?;
            added += pin.execute(params![key, p.device_id, p.display_name, at])?;
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![PINS_IMPORTED, legacy.digest],
    )?;
    tx.commit()?;
    Ok(added)
}
