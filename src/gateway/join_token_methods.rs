//! The join token methods, clawnode's own (`clawnode.joinToken.create|
//! list|revoke`; `clawnode join-token …` speaks them). Each needs
//! `operator.pairing` (`operator.admin` implies it), as approving devices
//! does — a join token admits new devices, so whoever may approve them may
//! make one —, checked by the dispatch (`super::methods`) before these run.
//! The secret is made here, returned once in `create`'s answer and stored
//! only as its SHA-256; nothing logs it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::info;

use super::registry::{JoinTokenCreated, NewJoinToken};
use super::state::Shared;
use crate::clock::now_ms;
use crate::protocol::join_token::{
    CreateJoinTokenParams, CreatedJoinToken, JoinToken, JoinTokenIdParams, JoinTokenList,
    RevokedJoinToken, DEFAULT_TTL_MS, DEFAULT_USES, MAX_DESCRIPTION_CHARS, MAX_LIVE, MAX_TTL_MS,
    MAX_USES, MIN_TTL_MS, TOKEN_PREFIX,
};
use crate::protocol::{method, ErrorCode, ErrorShape};

fn unavailable(e: anyhow::Error) -> ErrorShape {
    tracing::error!(error = %format!("{e:#}"), "cannot change the device registry");
    ErrorShape::new(
        ErrorCode::Unavailable,
        format!("the device registry was not changed: {e:#}"),
    )
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ErrorShape> {
    serde_json::to_value(v)
        .map_err(|e| ErrorShape::invalid_request(format!("cannot encode the answer: {e}")))
}

/// The checked parameters of a new token: lifetime, uses, description.
fn checked(params: CreateJoinTokenParams) -> Result<(u64, u64, Option<String>), ErrorShape> {
    let invalid = |why: String| {
        ErrorShape::invalid_request(format!(
            "invalid {} params: {why}",
            method::JOIN_TOKEN_CREATE
        ))
    };
    let ttl_ms = params.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(invalid(format!(
            "ttlMs must be from {MIN_TTL_MS} (1s) to {MAX_TTL_MS} (365d), not {ttl_ms}"
        )));
    }
    let uses = params.uses.unwrap_or(DEFAULT_USES);
    if !(1..=MAX_USES).contains(&uses) {
        return Err(invalid(format!(
            "uses must be from 1 to {MAX_USES}, not {uses}"
        )));
    }
    let description = params
        .description
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    if let Some(d) = &description {
        if d.chars().count() > MAX_DESCRIPTION_CHARS || d.chars().any(crate::safe_text::is_unsafe) {
            return Err(invalid(format!(
                "description: at most {MAX_DESCRIPTION_CHARS} characters, no control or bidi \
                 characters"
            )));
        }
    }
    Ok((ttl_ms, uses, description))
}

/// `clawnode.joinToken.create { ttlMs?, uses?, description? }`: a new
/// token; the answer holds its secret, which is never shown again.
/// `by` names the operator (stored as `createdBy`).
pub fn create(
    shared: &Shared,
    by: &str,
    params: CreateJoinTokenParams,
) -> Result<Value, ErrorShape> {
    let (ttl_ms, uses, description) = checked(params)?;
    let secret = format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let id: String = rand::random::<[u8; 6]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = now_ms();
    let token = JoinToken {
        id,
        description,
        created_at_ms: now,
        created_by: Some(by.to_string()),
        expires_at_ms: now + ttl_ms,
        uses,
        used: 0,
        last_used_at_ms: None,
        revoked_at_ms: None,
    };
    let new = NewJoinToken {
        token,
        sha256: Sha256::digest(secret.as_bytes()).into(),
    };
    match shared.create_join_token(new).map_err(unavailable)? {
        JoinTokenCreated::Created(token) => {
            info!(
                join_token_id = token.id.as_str(),
                expires_at_ms = token.expires_at_ms,
                uses = token.uses,
                created_by = by,
                "join token created"
            );
            to_value(&CreatedJoinToken {
                token: secret,
                join_token: token.view(now),
            })
        }
        JoinTokenCreated::TooMany(live) => Err(ErrorShape::invalid_request(format!(
            "{live} join tokens are live already (at most {MAX_LIVE}): revoke some \
             (`clawnode join-token list`, then `clawnode join-token revoke ID`) or wait until \
             they expire"
        ))),
    }
}

/// `clawnode.joinToken.list`: every token kept (live ones, and dead ones
/// for 90 days), newest first; never a secret.
pub fn list(shared: &Shared) -> Result<Value, ErrorShape> {
    let now = now_ms();
    let tokens = shared.join_tokens().map_err(unavailable)?;
    to_value(&JoinTokenList {
        join_tokens: tokens.into_iter().map(|t| t.view(now)).collect(),
        max_live: MAX_LIVE,
    })
}

/// `clawnode.joinToken.revoke { id }`: from now on the token admits
/// nobody. Devices that enrolled with it keep their records and access,
/// and no connection closes (`clawnode devices revoke` takes a device's
/// access away). `by` names the operator, for the log.
pub fn revoke(shared: &Shared, by: &str, params: JoinTokenIdParams) -> Result<Value, ErrorShape> {
    let id = params.id.trim();
    if id.is_empty() {
        return Err(ErrorShape::invalid_request(format!(
            "invalid {} params: id is empty",
            method::JOIN_TOKEN_REVOKE
        )));
    }
    let Some(token) = shared.revoke_join_token(id).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request("unknown join token id"));
    };
    info!(
        join_token_id = token.id.as_str(),
        revoked_by = by,
        "join token revoked by an operator"
    );
    to_value(&RevokedJoinToken {
        join_token: token.view(now_ms()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(ttl_ms: Option<u64>, uses: Option<u64>, d: Option<&str>) -> CreateJoinTokenParams {
        CreateJoinTokenParams {
            ttl_ms,
            uses,
            description: d.map(str::to_string),
        }
    }

    #[test]
    fn lifetime_uses_and_description_are_checked_with_defaults() {
        assert_eq!(
            checked(params(None, None, Some("  "))).unwrap(),
            (DEFAULT_TTL_MS, DEFAULT_USES, None)
        );
        assert_eq!(
            checked(params(Some(2000), Some(3), Some(" rack 4 "))).unwrap(),
            (2000, 3, Some("rack 4".to_string()))
        );
        for (bad, says) in [
            (params(Some(999), None, None), "ttlMs must be from 1000"),
            (params(Some(MAX_TTL_MS + 1), None, None), "(365d)"),
            (params(None, Some(0), None), "uses must be from 1"),
            (
                params(None, Some(MAX_USES + 1), None),
                "uses must be from 1",
            ),
            (params(None, None, Some("a\u{1b}[2J")), "no control"),
            (params(None, None, Some(&"x".repeat(129))), "at most 128"),
        ] {
            let e = checked(bad).unwrap_err();
            assert!(e.message.contains(says), "{}", e.message);
            assert!(
                e.message
                    .starts_with("invalid clawnode.joinToken.create params"),
                "{}",
                e.message
            );
        }
    }
}
