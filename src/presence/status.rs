//! The consumer-side status of a row: Active, Idle, Stale or Left.

use crate::protocol::payloads::PresenceEntry;

use super::DISCONNECT_REASON;

/// Age (ms) up to which a row shows as Active.
pub const ACTIVE_MAX_AGE_MS: u64 = 90_000;
/// Age (ms) up to which a row shows as Idle; older is Stale.
pub const IDLE_MAX_AGE_MS: u64 = 180_000;

/// The status indicator a consumer shows for a row, from the age of its `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceStatus {
    /// Updated within the last 90 s.
    Active = 0,
    /// Updated within the last 180 s.
    Idle = 1,
    /// Older than that.
    Stale = 2,
    /// The client disconnected (`reason: "disconnect"`); the row stays until
    /// the TTL takes it, but the host is not there.
    Left = 3,
}

impl PresenceStatus {
    /// The status of a row as an operator should read it: [`Left`] once its
    /// client has disconnected, whatever its age; else by the age of `ts`.
    ///
    /// [`Left`]: PresenceStatus::Left
    pub fn of_entry(entry: &PresenceEntry, now_ms: u64) -> Self {
        if entry.reason.as_deref() == Some(DISCONNECT_REASON) {
            PresenceStatus::Left
        } else {
            PresenceStatus::of(entry.ts, now_ms)
        }
    }

    /// The status of a row last updated at `entry_ts_ms`, seen at `now_ms`.
    /// A `ts` in the future counts as age 0.
    pub fn of(entry_ts_ms: u64, now_ms: u64) -> Self {
        match now_ms.saturating_sub(entry_ts_ms) {
            age if age <= ACTIVE_MAX_AGE_MS => PresenceStatus::Active,
            age if age <= IDLE_MAX_AGE_MS => PresenceStatus::Idle,
            _ => PresenceStatus::Stale,
        }
    }

    pub const ALL: [PresenceStatus; 4] = [
        PresenceStatus::Active,
        PresenceStatus::Idle,
        PresenceStatus::Stale,
        PresenceStatus::Left,
    ];

    /// "Active", "Idle", "Stale" or "Left".
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Active => "Active",
            PresenceStatus::Idle => "Idle",
            PresenceStatus::Stale => "Stale",
            PresenceStatus::Left => "Left",
        }
    }
}
