//! The queries both of the registry's connections make: the reader on the
//! handshake path ([`super::sqlite`]) and the writer thread
//! ([`super::writer`]), which decides a first claim again inside its
//! transaction; and the device record and device token reads both make.

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension as _};

use super::{DeviceRecord, DeviceState, Pin, TokenRecord};
use crate::protocol::Role;

/// The pin of presence key `key`, if it has one.
pub fn select_pin(conn: &Connection, key: &str) -> Result<Option<Pin>> {
    let pin = conn
        .prepare_cached(
            "SELECT device_id, claimed_at_ms, display_name FROM instances WHERE instance_id = ?1",
        )?
        .query_row([key], |r| {
            Ok(Pin {
                device_id: r.get(0)?,
                pinned_at_ms: r.get::<_, i64>(1)? as u64,
                display_name: r.get(2)?,
            })
        })
        .optional()?;
    Ok(pin)
}

/// A device's first-seen time and host name, if it is known.
pub fn select_first_seen(
    conn: &Connection,
    device_id: &str,
) -> Result<Option<(u64, Option<String>)>> {
    let found = conn
        .prepare_cached("SELECT first_seen_ms, display_name FROM devices WHERE device_id = ?1")?
        .query_row([device_id], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .optional()?;
    Ok(found)
}

/// A device record with its pins; `record_of_row` reads it.
pub const SELECT_RECORD: &str = "
    SELECT d.device_id, d.public_key, d.state, d.roles, d.display_name, d.label,
           d.first_seen_ms, d.last_seen_ms, d.last_address, d.approved_by, d.approved_at_ms,
           (SELECT json_group_array(instance_id) FROM instances i WHERE i.device_id = d.device_id),
           d.join_token_id,
           (SELECT json_group_array(json_object(
                'role', role, 'scopes', json(scopes), 'createdAtMs', issued_at_ms,
                'rotatedAtMs', rotated_at_ms, 'revokedAtMs', revoked_at_ms,
                'active', json(CASE WHEN token_sha256 IS NULL THEN 'false' ELSE 'true' END)))
              FROM (SELECT * FROM device_tokens t WHERE t.device_id = d.device_id ORDER BY role))
    FROM devices d";

pub fn record_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let json_list = |s: Option<String>| -> Vec<String> {
        s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    };
    let state: String = r.get(2)?;
    Ok(DeviceRecord {
        device_id: r.get(0)?,
        public_key: r.get(1)?,
        // The table's CHECK allows only the four states.
        state: DeviceState::parse(&state).unwrap_or(DeviceState::Revoked),
        roles: json_list(r.get(3)?),
        display_name: r.get(4)?,
        label: r.get(5)?,
        first_seen_ms: r.get::<_, i64>(6)? as u64,
        last_seen_ms: r.get::<_, i64>(7)? as u64,
        last_address: r.get(8)?,
        approved_by: r.get(9)?,
        approved_at_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        instance_ids: json_list(r.get(11)?),
        join_token_id: r.get(12)?,
        tokens: r
            .get::<_, Option<String>>(13)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
    })
}

/// One device's record, if it has one.
pub fn select_record(conn: &Connection, device_id: &str) -> Result<Option<DeviceRecord>> {
    let record = conn
        .prepare_cached(&format!("{SELECT_RECORD} WHERE d.device_id = ?1"))?
        .query_row([device_id], record_of_row)
        .optional()?;
    Ok(record)
}

/// One device token's record (a primary-key read).
pub fn select_token(conn: &Connection, device_id: &str, role: Role) -> Result<Option<TokenRecord>> {
    let row = conn
        .prepare_cached(
            "SELECT token_sha256, scopes, issued_at_ms, rotated_at_ms, revoked_at_ms
             FROM device_tokens WHERE device_id = ?1 AND role = ?2",
        )?
        .query_row(params![device_id, role.as_str()], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((sha256, scopes, issued, rotated, revoked)) = row else {
        return Ok(None);
    };
    Ok(Some(TokenRecord {
        device_id: device_id.to_string(),
        role,
        // A value that is not 64 hex digits matches no token.
        sha256: sha256.and_then(|h| from_hex(&h)),
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        issued_at_ms: issued as u64,
        rotated_at_ms: rotated.map(|v| v as u64),
        revoked_at_ms: revoked.map(|v| v as u64),
    }))
}

/// A digest as stored: lower-case hex.
pub fn to_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
