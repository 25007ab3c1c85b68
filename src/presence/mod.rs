//! The presence store: the gateway's in-memory list of who is around.
//!
//! It owns the rules of the presence spec (`docs/presence-spec.md`): the
//! gateway's self entry (rule 1), rows upserted on connect (rules 2 and 4),
//! beacons merged from `system-event` (rule 3), case-insensitive keys (rule
//! 5), TTL and disconnect (rule 6), the size cap (rule 7: never over a live
//! row, as clawnode changes it), the loopback caveat
//! (rule 8) and the newest-first list (rule 9). It also owns the consumer-side
//! Active/Idle/Stale status.
//!
//! The store is a plain struct: no sockets, no tasks, and no clock of its own.
//! Every method that depends on time takes `now_ms` (ms since the Unix epoch),
//! so the gateway passes the wall clock and tests pass plain numbers to walk
//! through TTLs and orderings deterministically.
//!
//! Who may write which row (authorization) is the gateway's job: the store
//! trusts the key it is given.
//!
//! [`PresenceStore::list_json`] is the list as JSON text, for the
//! `system-presence` answer, the hello-ok snapshot and `presence` events.
//! Each row's JSON is made once after it changes and reused until it changes
//! again, so a list costs a sort and a copy, not a serialization of every
//! row (docs/PERFORMANCE.md); [`PresenceStore::shared_list_json`] is that
//! list in pieces shared with the store, so the gateway sends it to many
//! clients without a copy for each ([`ListJson`]).
//!
//! `store.rs` has the store and its rules, `json.rs` the cached JSON of the
//! rows and the list, `status.rs` the status a consumer shows.

mod json;
mod status;
mod store;
#[cfg(test)]
mod tests;

pub use json::ListJson;
pub use status::{PresenceStatus, ACTIVE_MAX_AGE_MS, IDLE_MAX_AGE_MS};
pub use store::{
    is_loopback, ConnectionInfo, Evictions, PresenceKey, PresenceLimits, PresenceStore,
    DEFAULT_MAX_ENTRIES, DEFAULT_TTL_MS, DISCONNECT_REASON,
};
