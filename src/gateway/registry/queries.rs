//! The queries both of the registry's connections make: the reader on the
//! handshake path ([`super::sqlite`]) and the writer thread
//! ([`super::writer`]), which decides a first claim again inside its
//! transaction.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension as _};

use super::Pin;

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
