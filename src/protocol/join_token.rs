//! Join tokens for enrolment (`clawnode.joinToken.create|list|revoke`,
//! `clawnode join-token …`): secrets an operator creates with a lifetime
//! and a number of uses, each admitting new devices as role `node`, as the
//! join token file does. The gateway keeps only their SHA-256; the secret
//! is in the answer to `create` and nowhere else.

use serde::{Deserialize, Serialize};

/// Every created join token starts with this, so a leaked one is easy to
/// recognise (secret scanners, logs) and to tell from `gateway.token`.
pub const TOKEN_PREFIX: &str = "cnjoin_";
/// A token lives this long unless asked otherwise (`ttlMs`): a day.
pub const DEFAULT_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// The shortest and longest lifetimes: a second, a year.
pub const MIN_TTL_MS: u64 = 1000;
pub const MAX_TTL_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// New devices a token enrols unless asked otherwise (`uses`): one.
pub const DEFAULT_USES: u64 = 1;
/// The most new devices one token may enrol.
pub const MAX_USES: u64 = 100_000;
/// At most this many join tokens are live (neither expired nor revoked)
/// at once; creating another is refused until one expires or is revoked.
pub const MAX_LIVE: usize = 100;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 128;

/// A join token as the gateway keeps it: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    /// Its public id (8 hex digits), as `list` and `revoke` name it and
    /// device records refer to it (`joinTokenId`).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at_ms: u64,
    /// Who created it (the operator's device id or client name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// It admits nobody from this time on.
    pub expires_at_ms: u64,
    /// How many new devices it may enrol.
    pub uses: u64,
    /// How many new devices it has enrolled (an operator's approval of a
    /// request made with it counts too, and may take this past `uses`).
    pub used: u64,
    /// When it last let a connection in (stored at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

/// What a join token is good for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinTokenState {
    /// Admits new devices.
    Active,
    /// Every use is taken: admits devices already known, enrols no new one.
    UsedUp,
    /// Past its lifetime: admits nobody.
    Expired,
    /// Revoked by an operator: admits nobody.
    Revoked,
}

impl JoinTokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinTokenState::Active => "active",
            JoinTokenState::UsedUp => "used-up",
            JoinTokenState::Expired => "expired",
            JoinTokenState::Revoked => "revoked",
        }
    }
}

impl JoinToken {
    /// Its state at `now_ms`: revoked before expired before used up.
    pub fn state(&self, now_ms: u64) -> JoinTokenState {
        if self.revoked_at_ms.is_some() {
            JoinTokenState::Revoked
        } else if now_ms >= self.expires_at_ms {
            JoinTokenState::Expired
        } else if self.used >= self.uses {
            JoinTokenState::UsedUp
        } else {
            JoinTokenState::Active
        }
    }

    /// Whether it is live: neither expired nor revoked (what
    /// [`MAX_LIVE`] bounds).
    pub fn is_live(&self, now_ms: u64) -> bool {
        matches!(
            self.state(now_ms),
            JoinTokenState::Active | JoinTokenState::UsedUp
        )
    }

    /// The token with its state at `now_ms`, as the methods answer it.
    pub fn view(self, now_ms: u64) -> JoinTokenView {
        JoinTokenView {
            state: self.state(now_ms),
            token: self,
        }
    }
}

/// A join token and its state, as `list`, `create` and `revoke` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenView {
    #[serde(flatten)]
    pub token: JoinToken,
    pub state: JoinTokenState,
}

/// `clawnode.joinToken.create` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJoinTokenParams {
    /// Lifetime in ms ([`MIN_TTL_MS`]..=[`MAX_TTL_MS`]; default
    /// [`DEFAULT_TTL_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// New devices it may enrol (1..=[`MAX_USES`]; default [`DEFAULT_USES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u64>,
    /// Up to [`MAX_DESCRIPTION_CHARS`] characters, no control or bidi
    /// characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `clawnode.joinToken.create` answer: the secret, once, and the record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedJoinToken {
    /// The secret: give it to the hosts to enrol (their token file).
    pub token: String,
    pub join_token: JoinTokenView,
}

impl std::fmt::Debug for CreatedJoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedJoinToken")
            .field("token", &"<redacted>")
            .field("join_token", &self.join_token)
            .finish()
    }
}

/// `clawnode.joinToken.list` answer: every token kept, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenList {
    pub join_tokens: Vec<JoinTokenView>,
    /// [`MAX_LIVE`]: how many may be live at once.
    pub max_live: usize,
}

/// `clawnode.joinToken.revoke` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenIdParams {
    pub id: String,
}

/// `clawnode.joinToken.revoke` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedJoinToken {
    pub join_token: JoinTokenView,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at_ms: u64, uses: u64, used: u64, revoked: Option<u64>) -> JoinToken {
        JoinToken {
            id: "0123abcd".into(),
            description: None,
            created_at_ms: 0,
            created_by: None,
            expires_at_ms,
            uses,
            used,
            last_used_at_ms: None,
            revoked_at_ms: revoked,
        }
    }

    #[test]
    fn state_revoked_before_expired_before_used_up() {
        assert_eq!(token(10, 2, 1, None).state(9), JoinTokenState::Active);
        assert_eq!(token(10, 2, 2, None).state(9), JoinTokenState::UsedUp);
        assert_eq!(token(10, 2, 3, None).state(9), JoinTokenState::UsedUp);
        assert_eq!(token(10, 2, 2, None).state(10), JoinTokenState::Expired);
        assert_eq!(token(10, 2, 0, Some(5)).state(11), JoinTokenState::Revoked);
        assert!(token(10, 2, 2, None).is_live(9));
        assert!(!token(10, 2, 0, None).is_live(10));
    }

    #[test]
    fn the_view_carries_the_state_beside_the_fields_and_the_secret_is_not_debugged() {
        let v = serde_json::to_value(token(10, 2, 2, None).view(0)).unwrap();
        assert_eq!(v["state"], "used-up");
        assert_eq!(v["expiresAtMs"], 10);
        assert!(v.get("revokedAtMs").is_none());
        let back: JoinTokenView = serde_json::from_value(v).unwrap();
        assert_eq!(back.token.uses, 2);
        let created = CreatedJoinToken {
            token: "cnjoin_secret".into(),
            join_token: back,
        };
        assert!(!format!("{created:?}").contains("cnjoin_secret"));
    }
}
