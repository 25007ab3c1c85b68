//! The join token queries both of the registry's connections make: the
//! reader (the handshake's lookup by digest, the list) and the writer
//! (which reads a token back after changing it).

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension as _};

use super::JoinToken;

/// A join token's columns; `join_token_of_row` reads them.
pub const SELECT_JOIN_TOKEN: &str = "
    SELECT id, description, created_at_ms, created_by, expires_at_ms, uses, used,
           last_used_ms, revoked_at_ms
    FROM join_tokens";

pub fn join_token_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JoinToken> {
    let ms = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok(JoinToken {
        id: r.get(0)?,
        description: r.get(1)?,
        created_at_ms: ms(2)?.unwrap_or(0),
        created_by: r.get(3)?,
        expires_at_ms: ms(4)?.unwrap_or(0),
        uses: ms(5)?.unwrap_or(0),
        used: ms(6)?.unwrap_or(0),
        last_used_at_ms: ms(7)?,
        revoked_at_ms: ms(8)?,
    })
}

/// The join token with this id, if it is kept.
pub fn select_join_token(conn: &Connection, id: &str) -> Result<Option<JoinToken>> {
    let token = conn
        .prepare_cached(&format!("{SELECT_JOIN_TOKEN} WHERE id = ?1"))?
        .query_row([id], join_token_of_row)
        .optional()?;
    Ok(token)
}
