//! The device registry: every device that proved its key to this gateway,
//! and which presence keys (instance ids) each has claimed. It replaces
//! `pins.json` (issue 15, finding 11) and is the start of part 10's device
//! records (state, roles, first and last seen, last address, label,
//! approval).
//!
//! **Pinning.** A presence key belongs to the first device that claimed it:
//! another key claiming it is refused with `INSTANCE_ID_PINNED` until an
//! operator runs `clawnode forget <id>`. A device's own id is always its own
//! (a row keyed by a device id — a client that sent no `instanceId` — can
//! be claimed by no other key), whether or not it was ever claimed
//! explicitly. Connections without a device identity claim nothing: their
//! rows live where no claim reaches (`PresenceKey::for_connection`).
//!
//! **The seam.** The gateway sees the registry only through
//! [`DeviceRegistry`]; [`decide`] is the one rule every implementation
//! applies. [`SqliteRegistry`] is the product (an embedded SQLite file in
//! the state directory); [`MemoryRegistry`] serves embedded gateways,
//! tests and fuzzing; part 11 puts a shared-engine implementation (NATS
//! JetStream KV: create-if-absent for first-claim-wins) behind the same
//! trait.

mod join_token_queries;
mod memory;
mod pins_file;
mod queries;
mod schema;
mod sqlite;
mod writer;

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::presence::PresenceKey;
pub use crate::protocol::join_token::JoinToken;
use crate::protocol::Role;

pub use memory::MemoryRegistry;
pub use pins_file::{PINS_FILE, PINS_FILE_MIGRATED};
pub use sqlite::{SqliteRegistry, REGISTRY_FILE};

/// One presence key's pin: the device that first claimed it (the answer
/// of `clawnode.instance.forget` and the message of `INSTANCE_ID_PINNED`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// The device id (SHA-256 of the public key) that first claimed it.
    pub device_id: String,
    pub pinned_at_ms: u64,
    /// The host name it connected with, to help an operator recognise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A device that has just proved its key in a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// SHA-256 of the public key, lower-case hex (checked by the proof).
    pub id: String,
    /// The Ed25519 public key as the client sent it (base64url).
    pub public_key: String,
    /// The role it connected with (`None`: the gateway's own device).
    pub role: Option<Role>,
    /// Where it connected from.
    pub address: Option<IpAddr>,
    /// The host name it connected with.
    pub display_name: Option<String>,
    /// The created join token it presented (its id): a new device's record
    /// keeps it, and its enrolment takes one of the token's uses.
    pub join_token: Option<String>,
}

/// A connection's claim of a presence key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The presence key, trimmed and lower-cased (`PresenceKey::as_str`).
    pub key: String,
    pub device: Device,
    pub now_ms: u64,
    /// A device token to issue the device with the claim (a new device's
    /// first connect): stored, issued at `now_ms`, in the same commit as
    /// the device's record and pin when the claim is admitted; never when
    /// it is refused.
    pub token: Option<ClaimToken>,
}

/// A device token issued with a claim ([`Claim::token`]): what
/// [`TokenChange::Issue`] stores, for the claiming device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    pub role: Role,
    /// SHA-256 of the token (the token itself is never stored).
    pub sha256: [u8; 32],
    pub scopes: Vec<String>,
}

/// What a claim decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimCheck {
    /// The key is this device's: pinned to it before, or its own id.
    Known,
    /// First claim: the key is pinned to this device now.
    New,
    /// The key belongs to another device: refuse.
    Conflict(Pin),
    /// A new device's join token had no use left (or expired, or was
    /// revoked) when its enrolment was stored: refuse. The token as it is
    /// (`None`: no longer kept).
    JoinTokenRefused(Option<Box<JoinToken>>),
}

/// The registry as the gateway uses it. Keys are normalized by the caller
/// (trimmed, lower-cased). Reads are cheap enough for the handshake path
/// (indexed, O(log n)); writes never block the async runtime except
/// [`DeviceRegistry::forget`], a rare operator action.
pub trait DeviceRegistry: Send + Sync {
    /// Decides `claim` (first claim wins, [`decide`]) and records the
    /// device as seen. A new pin is stored before the future resolves; so
    /// is `claim.token` when the claim is admitted ([`ClaimCheck::Known`]
    /// or [`ClaimCheck::New`]), in the same commit as the device's record
    /// and pin (a refused claim stores no token).
    fn claim(&self, claim: Claim) -> BoxFuture<'static, Result<ClaimCheck>>;

    /// Drops a key's pin; stored before it returns. Blocks briefly.
    fn forget(&self, key: &str) -> Result<Option<Pin>>;

    /// The pin of `key`, if any.
    fn pin(&self, key: &str) -> Result<Option<Pin>>;

    /// Whether `device_id` has proved its key to this gateway before (for
    /// part 9's rate limit: a known device is not locked out by other
    /// clients' failures from its address).
    fn is_known_device(&self, device_id: &str) -> bool;

    /// How many devices and pins are stored.
    fn counts(&self) -> Result<Counts>;

    /// Stores everything queued so far (last-seen updates); blocks.
    fn flush(&self) -> Result<()>;

    /// A device's admission state (`None`: no record). One indexed read.
    fn device_state(&self, device_id: &str) -> Result<Option<DeviceState>>;

    /// Applies an operator's change; stored before it returns (blocks
    /// briefly, a rare operator action). The device's record after the
    /// change (before it, for a removal); `None`: no such device.
    fn change(&self, change: Change) -> Result<Option<DeviceRecord>>;

    /// Every device's record, oldest first.
    fn devices(&self) -> Result<Vec<DeviceRecord>>;

    /// The created join token whose secret has this SHA-256, if any. One
    /// indexed read (the handshake path).
    fn join_token(&self, sha256: &[u8; 32]) -> Result<Option<JoinToken>>;

    /// Stores a new join token, unless [`MAX_LIVE`] are live at `now_ms`
    /// already; tokens dead (expired or revoked) for [`JOIN_TOKEN_KEPT_MS`]
    /// are deleted. Stored before it returns.
    ///
    /// [`MAX_LIVE`]: crate::protocol::join_token::MAX_LIVE
    fn create_join_token(&self, new: NewJoinToken) -> Result<JoinTokenCreated>;

    /// Every join token kept, newest first.
    fn join_tokens(&self) -> Result<Vec<JoinToken>>;

    /// Revokes a join token (kept, as revoked at `now_ms`; revoking it again
    /// changes nothing). `None`: no such token. Stored before it returns.
    fn revoke_join_token(&self, id: &str, now_ms: u64) -> Result<Option<JoinToken>>;

    /// Notes that the join token `id` let a connection in at `now_ms`
    /// (stored at most once a minute per token; best effort).
    fn join_token_used(&self, id: &str, now_ms: u64);

    /// The stored token of `device_id` for `role` (`None`: never issued).
    /// One primary-key read, for the handshake path.
    fn device_token(&self, device_id: &str, role: Role) -> Result<Option<TokenRecord>>;

    /// Issues, rotates or revokes a device token; stored before the future
    /// resolves (the handshake path awaits a new token's commit before its
    /// `hello-ok` carries it). The token's record after the change; `None`:
    /// no such device (issue), or no such token (rotate, revoke).
    fn change_token(&self, change: TokenChange) -> BoxFuture<'static, Result<Option<TokenRecord>>>;

    /// The operators' labels, by device id (only devices that have one):
    /// what the gateway keeps in memory for its presence rows.
    fn labels(&self) -> Result<std::collections::HashMap<String, String>> {
        Ok(self
            .devices()?
            .into_iter()
            .filter_map(|r| Some((r.device_id, r.label?)))
            .collect())
    }
}

/// Dead join tokens (expired or revoked) are kept this long, so the devices
/// list can still name them, then deleted when the next one is created.
pub const JOIN_TOKEN_KEPT_MS: u64 = 90 * 24 * 60 * 60 * 1000;

/// A join token's `last used` time is stored at most this often.
pub const JOIN_TOKEN_USED_EVERY_MS: u64 = 60_000;

/// A join token to store: its record and the digest of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJoinToken {
    pub token: JoinToken,
    pub sha256: [u8; 32],
}

/// What [`DeviceRegistry::create_join_token`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinTokenCreated {
    Created(JoinToken),
    /// This many are live already (at most [`MAX_LIVE`]): not stored.
    ///
    /// [`MAX_LIVE`]: crate::protocol::join_token::MAX_LIVE
    TooMany(usize),
}

/// A device token as stored: never the token, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub device_id: String,
    pub role: Role,
    /// SHA-256 of the valid token; `None`: revoked, or rotated without an
    /// in-band replacement (a new one is issued on the device's next
    /// connect with another credential).
    pub sha256: Option<[u8; 32]>,
    /// What it grants: for role operator, the scopes approved with it.
    pub scopes: Vec<String>,
    /// When the current token (or the last one) was issued.
    pub issued_at_ms: u64,
    pub rotated_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether `token` is this record's valid token: the SHA-256 digests
    /// are compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        use sha2::{Digest as _, Sha256};
        let Some(stored) = &self.sha256 else {
            return false;
        };
        let given = Sha256::digest(token.as_bytes());
        given
            .iter()
            .zip(stored.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// A change to a device's token for one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    /// A new token (its SHA-256) for the device and role, replacing any:
    /// issued in a handshake.
    Issue {
        device_id: String,
        role: Role,
        sha256: [u8; 32],
        scopes: Vec<String>,
        now_ms: u64,
    },
    /// The token stops working at once; `sha256` is its replacement when
    /// it was handed to the caller (in-band), else none is valid until the
    /// next issue. `scopes` replaces the grant when given.
    Rotate {
        device_id: String,
        role: Role,
        sha256: Option<[u8; 32]>,
        scopes: Option<Vec<String>>,
        now_ms: u64,
    },
    /// The token stops working at once.
    Revoke {
        device_id: String,
        role: Role,
        now_ms: u64,
    },
}

/// Waits for a registry future on this thread (an operator's change from
/// a request handler, which is synchronous): the thread sleeps until the
/// writer answers, as [`DeviceRegistry::change`] does.
pub fn wait<T>(future: BoxFuture<'static, T>) -> T {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = future;
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// SHA-256 of a token, as the registry stores it.
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// A device's admission state. `pending` requests live in the gateway's
/// memory (`gateway::pairing`), bounded and expiring; the registry stores
/// the decided states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Pending,
    Approved,
    Rejected,
    Revoked,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Approved => "approved",
            DeviceState::Rejected => "rejected",
            DeviceState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<DeviceState> {
        [
            DeviceState::Pending,
            DeviceState::Approved,
            DeviceState::Rejected,
            DeviceState::Revoked,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// A device's stored record (`device.pair.list`, `clawnode devices list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub state: DeviceState,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at_ms: Option<u64>,
    /// The presence keys (instance ids) pinned to it.
    #[serde(default)]
    pub instance_ids: Vec<String>,
    /// The created join token it enrolled with (its id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token_id: Option<String>,
    /// Its device tokens, one per role (never the token itself), as
    /// OpenClaw's `device.pair.list` summarizes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenSummary>,
}

/// A device token in a device's record: what it grants and its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenSummary {
    pub role: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// When the current (or last) token was issued.
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
    /// clawnode's: whether a token is valid now (`false` after a
    /// revocation, or a rotation whose replacement was not handed out: the
    /// device is issued one on its next connect with the join token).
    pub active: bool,
}

impl From<&TokenRecord> for TokenSummary {
    fn from(t: &TokenRecord) -> Self {
        TokenSummary {
            role: t.role.as_str().to_string(),
            scopes: t.scopes.clone(),
            created_at_ms: t.issued_at_ms,
            rotated_at_ms: t.rotated_at_ms,
            revoked_at_ms: t.revoked_at_ms,
            active: t.sha256.is_some(),
        }
    }
}

/// An operator's change to a device record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Sets a device's state (`approved` records who and when). A device
    /// with no record gets one from `device` (approving a pending request);
    /// without `device` nothing changes.
    SetState {
        device_id: String,
        state: DeviceState,
        by: Option<String>,
        device: Option<Device>,
        now_ms: u64,
    },
    /// Deletes the record and the device's pins.
    Remove { device_id: String },
    /// Sets the operator's label (shown before the host name).
    Label { device_id: String, label: String },
}

/// Sizes, for metrics and the status line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub devices: u64,
    pub pins: u64,
    /// Devices approved, rejected and revoked.
    pub approved: u64,
    pub rejected: u64,
    pub revoked: u64,
}

/// What a claim finds stored about its key.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The key's pin, if it has one.
    pub pin: Option<Pin>,
    /// The key is the id of a known device: its first-seen time and name.
    pub device_with_key_as_id: Option<(u64, Option<String>)>,
}

/// What to store after [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change about the pin.
    Keep(ClaimCheck),
    /// Pin the key to the claiming device (a first claim, or a device
    /// taking back its own id from a stale pin).
    PinToClaimant,
    /// The key is the claiming device's own id, not pinned: nothing to pin.
    OwnId,
}

/// The one pinning rule (see the module docs): a device's own id is its
/// own; a pinned key belongs to its pin's device; the id of another known
/// device belongs to that device; anything else is pinned to the first
/// device that claims it.
pub fn decide(claim: &Claim, found: &Found) -> Decision {
    let device = claim.device.id.as_str();
    if claim.key == device {
        return match &found.pin {
            // A pin someone made on this device's id before the device
            // was known: the id is the device's own, whatever was pinned.
            Some(pin) if pin.device_id != device => Decision::PinToClaimant,
            _ => Decision::OwnId,
        };
    }
    match (&found.pin, &found.device_with_key_as_id) {
        (Some(pin), _) if pin.device_id == device => Decision::Keep(ClaimCheck::Known),
        (Some(pin), _) => Decision::Keep(ClaimCheck::Conflict(pin.clone())),
        (None, Some((first_seen_ms, name))) => Decision::Keep(ClaimCheck::Conflict(Pin {
            device_id: claim.key.clone(),
            pinned_at_ms: *first_seen_ms,
            display_name: name.clone(),
        })),
        (None, None) => Decision::PinToClaimant,
    }
}

/// Drops a pin from the registry in `state_dir` directly, for `clawnode
/// forget` when no gateway runs on this host (an earlier version's
/// `pins.json` is imported first, as the gateway would).
pub fn forget_offline(state_dir: &Path, instance_id: &str) -> Result<Option<Pin>> {
    let Some(key) = PresenceKey::normalize(instance_id) else {
        return Ok(None);
    };
    SqliteRegistry::open(state_dir)?.forget(key.as_str())
}

/// Whether `state_dir` holds a registry (or a `pins.json` to import).
pub fn exists_in(state_dir: &Path) -> bool {
    state_dir.join(REGISTRY_FILE).exists() || state_dir.join(PINS_FILE).exists()
}

#[cfg(test)]
mod tests;
