//! The store's rules, the list JSON and the status, as the spec states them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::protocol::connect::{ClientInfo, Role};
use crate::protocol::mode;
use crate::protocol::payloads::{PresenceEntry, SystemEventParams};

const T0: u64 = 1_795_377_600_000;
const GW_INSTANCE: &str = "93a077e9-64cb-46c5-91e4-b191ec6452bb";

fn self_entry() -> PresenceEntry {
    PresenceEntry {
        instance_id: Some(GW_INSTANCE.to_string()),
        host: Some("vm".into()),
        ip: Some("192.0.2.2".into()),
        mode: Some(mode::GATEWAY.into()),
        reason: Some("self".into()),
        text: Some("Gateway: vm (192.0.2.2) · app 1 · mode gateway · reason self".into()),
        ts: T0,
        ..PresenceEntry::default()
    }
}

fn store() -> PresenceStore {
    PresenceStore::new(self_entry(), PresenceLimits::default())
}

fn store_with(limits: PresenceLimits) -> PresenceStore {
    PresenceStore::new(self_entry(), limits)
}

fn client(mode: &str, instance_id: Option<&str>) -> ClientInfo {
    ClientInfo {
        id: "openclaw-macos".into(),
        display_name: Some("Mac Studio".into()),
        version: "2026.9.6".into(),
        platform: "macos 15.4".into(),
        device_family: Some("Mac".into()),
        model_identifier: Some("Mac14,13".into()),
        mode: mode.into(),
        instance_id: instance_id.map(str::to_string),
    }
}

fn conn<'a>(conn_id: &'a str, client: &'a ClientInfo, scopes: &'a [String]) -> ConnectionInfo<'a> {
    ConnectionInfo {
        conn_id,
        client,
        role: Role::Operator,
        scopes,
        device_id: None,
        remote_ip: None,
    }
}

/// A beacon that carries only its text.
fn text_beacon(text: &str) -> SystemEventParams {
    SystemEventParams {
        text: text.into(),
        ..Default::default()
    }
}

fn key(raw: &str) -> PresenceKey {
    PresenceKey::normalize(raw).unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Connects a `ui` client with a device identity and this instanceId at
/// `now`: its row is keyed by the instanceId.
fn connect_ui(store: &mut PresenceStore, instance_id: &str, now: u64) -> PresenceKey {
    let c = client("ui", Some(instance_id));
    let info = ConnectionInfo {
        device_id: Some("dev-ui"),
        ..conn(instance_id, &c, &[])
    };
    store.connect(&info, now).unwrap()
}

#[test]
fn default_limits_are_five_minutes_and_200_rows() {
    let limits = PresenceLimits::default();
    assert_eq!(limits.ttl_ms, 300_000);
    assert_eq!(limits.max_entries, 200);
    assert_eq!(store().limits(), limits);
}

#[test]
fn rule1_self_entry_is_seeded_and_listed_with_a_fresh_ts() {
    let mut s = store();
    assert_eq!(s.len(), 1);
    assert!(!s.is_empty());
    assert_eq!(s.self_key().as_str(), GW_INSTANCE);
    assert_eq!(s.get(&key(GW_INSTANCE)), Some(&self_entry()));
    let list = s.list(T0 + 5_000);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason.as_deref(), Some("self"));
    assert_eq!(list[0].ts, T0 + 5_000);
}

#[test]
fn rule1_self_entry_without_instance_id_gets_the_self_key() {
    let entry = PresenceEntry {
        instance_id: None,
        ..self_entry()
    };
    let s = PresenceStore::new(entry, PresenceLimits::default());
    assert_eq!(s.self_key().as_str(), "self");
}

#[test]
fn rule1_self_entry_is_never_pruned() {
    let mut s = store();
    assert_eq!(s.prune(T0 + 10 * DEFAULT_TTL_MS), 0);
    let list = s.list(T0 + 10 * DEFAULT_TTL_MS);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason.as_deref(), Some("self"));
}

#[test]
fn rule1_a_client_claiming_the_gateway_instance_id_gets_its_own_row() {
    let mut s = store();
    // A client with a device (the gateway refuses it: the gateway's own id
    // is pinned; the store keeps the rule anyway).
    let c = client("ui", Some(&GW_INSTANCE.to_uppercase()));
    let info = ConnectionInfo {
        device_id: Some("dev-1"),
        ..conn("c-1", &c, &[])
    };
    let k = s.connect(&info, T0 + 1).unwrap();
    assert_eq!(&k, s.self_key());
    // Without a device its key is an unclaimed one: never the self key.
    let c = client("ui", Some(GW_INSTANCE));
    let unclaimed = s.connect(&conn("c-2", &c, &[]), T0 + 1).unwrap();
    assert_ne!(&unclaimed, s.self_key());
    assert!(!unclaimed.is_claimable() && k.is_claimable());
    assert!(s.disconnect(&unclaimed, T0 + 1));
    s.prune(T0 + 1 + DEFAULT_TTL_MS + 1);
    let beacon = SystemEventParams {
        text: "impostor".into(),
        host: Some("elsewhere".into()),
        ..SystemEventParams::default()
    };
    s.beacon(&k, &beacon, None, T0 + 2);
    // The self entry is untouched ...
    assert_eq!(s.get(s.self_key()).unwrap().host.as_deref(), Some("vm"));
    // ... and the client's row is listed beside it.
    let list = s.list(T0 + 3);
    assert_eq!(list.len(), 2);
    assert_eq!(
        list.iter()
            .filter(|e| e.reason.as_deref() == Some("self"))
            .count(),
        1
    );
    assert!(list.iter().any(|e| e.host.as_deref() == Some("elsewhere")));
    // A disconnect of that client never turns the self entry into "disconnect".
    assert!(s.disconnect(&k, T0 + 4));
    assert_eq!(s.get(s.self_key()).unwrap().reason.as_deref(), Some("self"));
}

#[test]
fn rule2_connect_upserts_the_row_with_its_fields_and_reason_connect() {
    let mut s = store();
    let c = client("ui", Some("  Desk-1 "));
    let scopes = vec!["operator.read".to_string()];
    let k = s
        .connect(
            &ConnectionInfo {
                device_id: Some("dev-1"),
                remote_ip: Some(v4(192, 0, 2, 10)),
                ..conn("c1", &c, &scopes)
            },
            T0 + 10,
        )
        .unwrap();
    assert_eq!(k.as_str(), "desk-1");
    let row = s.get(&k).unwrap();
    assert_eq!(
        row,
        &PresenceEntry {
            instance_id: Some("Desk-1".into()),
            host: Some("Mac Studio".into()),
            ip: Some("192.0.2.10".into()),
            version: Some("2026.9.6".into()),
            platform: Some("macos 15.4".into()),
            device_family: Some("Mac".into()),
            model_identifier: Some("Mac14,13".into()),
            mode: Some("ui".into()),
            last_input_seconds: None,
            reason: Some("connect".into()),
            ts: T0 + 10,
            device_id: Some("dev-1".into()),
            roles: Some(vec!["operator".into()]),
            scopes: Some(scopes.clone()),
            text: Some("Node: Mac Studio · mode ui".into()),
            operator_label: None,
        }
    );
    assert_eq!(s.len(), 2);
}

#[test]
fn rule2_reconnect_merges_roles_scopes_and_keeps_fields_it_does_not_give() {
    let mut s = store();
    let k = key("desk-1");
    s.beacon(
        &k,
        &SystemEventParams {
            text: "Node: desk · reason periodic".into(),
            last_input_seconds: Some(7),
            ..SystemEventParams::default()
        },
        None,
        T0,
    );
    let read = vec!["operator.read".to_string()];
    let write = vec!["operator.write".to_string(), "operator.read".to_string()];
    let mut c = client("ui", Some("desk-1"));
    s.connect(
        &ConnectionInfo {
            device_id: Some("dev-1"),
            ..conn("c1", &c, &read)
        },
        T0 + 1,
    );
    c.display_name = None;
    c.device_family = None;
    s.connect(
        &ConnectionInfo {
            role: Role::Node,
            device_id: Some("dev-1"),
            ..conn("c2", &c, &write)
        },
        T0 + 2,
    );
    let row = s.get(&k).unwrap();
    assert_eq!(row.roles, Some(vec!["operator".into(), "node".into()]));
    assert_eq!(
        row.scopes,
        Some(vec!["operator.read".into(), "operator.write".into()])
    );
    assert_eq!(row.host.as_deref(), Some("Mac Studio"), "kept");
    assert_eq!(row.device_family.as_deref(), Some("Mac"), "kept");
    assert_eq!(row.last_input_seconds, Some(7), "kept");
    assert_eq!(
        row.text.as_deref(),
        Some("Node: desk · reason periodic"),
        "kept"
    );
    assert_eq!(row.reason.as_deref(), Some("connect"));
    assert_eq!(row.ts, T0 + 2);
}

#[test]
fn rule2_connect_without_scopes_omits_them_and_defaults_the_text() {
    let mut s = store();
    let mut c = client("webchat", Some("w-1"));
    c.display_name = None;
    let k = s.connect(&conn("c1", &c, &[]), T0).unwrap();
    let row = s.get(&k).unwrap();
    assert_eq!(row.scopes, None);
    assert_eq!(row.host, None);
    assert_eq!(row.text.as_deref(), Some("Node: unknown · mode webchat"));
}

#[test]
fn rule2_cli_mode_never_becomes_an_entry() {
    let mut s = store();
    for mode in ["cli", " CLI ", "Cli"] {
        let c = client(mode, Some("cli-instance"));
        assert_eq!(s.connect(&conn("c1", &c, &[]), T0), None, "{mode:?}");
    }
    assert_eq!(s.len(), 1);
    assert_eq!(s.list(T0).len(), 1);
    // Nothing was counted either: a later disconnect is a no-op.
    assert!(!s.disconnect(&key("cli-instance"), T0 + 1));
}

#[test]
fn rule3_beacon_merges_fields_refreshes_ts_and_sets_last_input_seconds() {
    let mut s = store();
    let k = connect_ui(&mut s, "desk-1", T0);
    s.beacon(
        &k,
        &SystemEventParams {
            text:
                "Node: desk (192.0.2.10) · app 1 · last input 42s ago · mode ui · reason periodic"
                    .into(),
            host: Some("desk".into()),
            ip: Some("192.0.2.10".into()),
            version: Some("1".into()),
            last_input_seconds: Some(42),
            reason: Some("periodic".into()),
            ..SystemEventParams::default()
        },
        None,
        T0 + 30_000,
    );
    let row = s.get(&k).unwrap();
    assert_eq!(row.host.as_deref(), Some("desk"));
    assert_eq!(row.ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(row.version.as_deref(), Some("1"));
    assert_eq!(row.last_input_seconds, Some(42));
    assert_eq!(row.reason.as_deref(), Some("periodic"));
    assert!(row
        .text
        .as_deref()
        .unwrap()
        .starts_with("Node: desk (192.0.2.10)"));
    assert_eq!(row.ts, T0 + 30_000);
    // Connect-only fields are kept.
    assert_eq!(row.roles, Some(vec!["operator".into()]));
}

#[test]
fn rule3_beacon_keeps_absent_fields() {
    let mut s = store();
    let k = connect_ui(&mut s, "desk-1", T0);
    let full = SystemEventParams {
        text: "first".into(),
        ip: Some("192.0.2.10".into()),
        last_input_seconds: Some(42),
        reason: Some("periodic".into()),
        mode: Some("ui".into()),
        ..SystemEventParams::default()
    };
    s.beacon(&k, &full, None, T0 + 1);
    let sparse = SystemEventParams {
        text: "again".into(),
        last_input_seconds: Some(3),
        host: Some("  ".into()),
        ..SystemEventParams::default()
    };
    s.beacon(&k, &sparse, None, T0 + 2);
    let row = s.get(&k).unwrap();
    assert_eq!(row.text.as_deref(), Some("again"));
    assert_eq!(row.last_input_seconds, Some(3));
    assert_eq!(row.ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(row.reason.as_deref(), Some("periodic"));
    assert_eq!(
        row.host.as_deref(),
        Some("Mac Studio"),
        "blank counts as absent"
    );
    assert_eq!(row.ts, T0 + 2);
}

#[test]
fn rule3_beacon_creates_a_missing_row_with_its_instance_id_as_sent() {
    let mut s = store();
    let k = key("Someone-Else");
    s.beacon(
        &k,
        &SystemEventParams {
            text: "x".into(),
            instance_id: Some("Someone-Else".into()),
            host: Some("far".into()),
            ..SystemEventParams::default()
        },
        None,
        T0,
    );
    let row = s.get(&key("someone-else")).unwrap();
    assert_eq!(row.instance_id.as_deref(), Some("Someone-Else"));
    assert_eq!(row.host.as_deref(), Some("far"));
    assert_eq!(row.text.as_deref(), Some("x"));
    // Not connected: the TTL takes it.
    assert_eq!(s.prune(T0 + DEFAULT_TTL_MS + 1), 1);
}

#[test]
fn rule4_node_connect_upserts_a_node_row() {
    let mut s = store();
    let mut c = client("node", Some("3d85e384"));
    c.id = "node-host".into();
    c.display_name = Some("capnode".into());
    let k = s
        .connect(
            &ConnectionInfo {
                role: Role::Node,
                device_id: Some("3d85e384"),
                ..conn("c1", &c, &[])
            },
            T0,
        )
        .unwrap();
    let row = s.get(&k).unwrap();
    assert_eq!(row.mode.as_deref(), Some("node"));
    assert_eq!(row.roles, Some(vec!["node".into()]));
    assert_eq!(row.scopes, None);
    assert_eq!(row.device_id.as_deref(), Some("3d85e384"));
    assert_eq!(row.text.as_deref(), Some("Node: capnode · mode node"));
}

#[test]
fn rule5_keys_are_case_insensitive_and_trimmed() {
    assert_eq!(key("  Mac-Studio-1 ").as_str(), "mac-studio-1");
    assert_eq!(PresenceKey::normalize("   "), None);
    assert_eq!(PresenceKey::normalize(""), None);
    assert_eq!(key("AbC").to_string(), "abc");
    let mut s = store();
    let a = connect_ui(&mut s, "Mac-Studio-1", T0);
    let b = connect_ui(&mut s, "  mac-studio-1 ", T0 + 1);
    assert_eq!(a, b);
    assert_eq!(s.list(T0 + 2).len(), 2, "self + one row");
}

#[test]
fn rule5_key_falls_back_to_device_id_then_connection_id() {
    assert_eq!(
        PresenceKey::for_connection(Some("Inst"), Some("dev"), "conn").as_str(),
        "inst"
    );
    assert_eq!(
        PresenceKey::for_connection(Some("  "), Some("Dev"), "conn").as_str(),
        "dev"
    );
    assert_eq!(
        PresenceKey::for_connection(None, None, "Conn-1").as_str(),
        "conn-1"
    );
    assert_eq!(
        PresenceKey::for_connection(Some(""), Some(" "), "conn-2").as_str(),
        "conn-2"
    );
}

#[test]
fn rule5_reconnect_without_instance_id_gives_a_duplicate_row() {
    let mut s = store();
    let c = client("ui", None);
    let first = s.connect(&conn("conn-1", &c, &[]), T0).unwrap();
    s.disconnect(&first, T0 + 1);
    let second = s.connect(&conn("conn-2", &c, &[]), T0 + 2).unwrap();
    assert_ne!(first, second);
    let list = s.list(T0 + 3);
    assert_eq!(
        list.iter()
            .filter(|e| e.host.as_deref() == Some("Mac Studio"))
            .count(),
        2
    );
}

#[test]
fn rule6_ttl_prunes_after_the_ttl_not_before() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: 1_000,
        max_entries: 10,
    });
    let k = key("beacon-only");
    s.beacon(&k, &text_beacon("x"), None, T0);
    assert_eq!(s.prune(T0 + 1_000), 0, "exactly the ttl is kept");
    assert!(s.get(&k).is_some());
    // Past the TTL, reads leave the row out but never remove it: only a
    // prune (the gateway's tick) does.
    assert_eq!(s.list(T0 + 1_001).len(), 1, "the list leaves it out");
    let json: Vec<PresenceEntry> = serde_json::from_str(&s.list_json(T0 + 1_001)).unwrap();
    assert_eq!(json.len(), 1, "the JSON list too");
    assert_eq!(s.count(T0 + 1_001), 1);
    assert_eq!(s.status_counts(T0 + 1_001), [1, 0, 0, 0]);
    assert!(s.get(&k).is_some(), "still stored until the prune");
    assert_eq!(s.prune(T0 + 1_001), 1);
    assert!(s.get(&k).is_none());
}

#[test]
fn rule6_an_open_connection_never_expires_and_touch_refreshes_it() {
    let mut s = store();
    let k = connect_ui(&mut s, "stayer", T0);
    let much_later = T0 + 10 * DEFAULT_TTL_MS;
    assert_eq!(s.prune(much_later), 0);
    assert_eq!(s.get(&k).unwrap().ts, T0, "prune does not touch");
    assert!(s.touch_connected(much_later));
    assert_eq!(s.get(&k).unwrap().ts, much_later);
    assert!(!s.touch_connected(much_later), "nothing new to touch");
    assert_eq!(s.get(&k).unwrap().reason.as_deref(), Some("connect"));
}

#[test]
fn rule6_touch_leaves_disconnected_rows_alone() {
    let mut s = store();
    let k = connect_ui(&mut s, "leaver", T0);
    s.disconnect(&k, T0 + 1);
    assert!(!s.touch_connected(T0 + 2));
    assert_eq!(s.get(&k).unwrap().ts, T0 + 1);
}

#[test]
fn rule6_disconnect_leaves_reason_disconnect_until_the_ttl() {
    let mut s = store();
    let k = connect_ui(&mut s, "leaver", T0);
    assert!(s.disconnect(&k, T0 + 100));
    let row = s.get(&k).unwrap();
    assert_eq!(row.reason.as_deref(), Some("disconnect"));
    assert_eq!(row.ts, T0 + 100);
    assert_eq!(s.prune(T0 + 100 + DEFAULT_TTL_MS), 0);
    assert_eq!(s.prune(T0 + 101 + DEFAULT_TTL_MS), 1);
    assert!(s.get(&k).is_none());
    assert!(!s.disconnect(&k, T0 + 200), "already closed: no-op");
}

#[test]
fn rule6_disconnect_of_an_unknown_key_is_a_noop() {
    let mut s = store();
    assert!(!s.disconnect(&key("nobody"), T0));
    let k = key("beacon-only");
    s.beacon(&k, &text_beacon("x"), None, T0);
    assert!(!s.disconnect(&k, T0 + 1), "no open connection for it");
    assert_eq!(s.get(&k).unwrap().reason, None);
}

#[test]
fn rule6_two_connections_sharing_a_key_stay_connected_until_both_close() {
    let mut s = store();
    let k = connect_ui(&mut s, "shared", T0);
    assert_eq!(connect_ui(&mut s, "SHARED", T0 + 1), k);
    assert!(!s.disconnect(&k, T0 + 2), "one still open");
    assert_eq!(s.get(&k).unwrap().reason.as_deref(), Some("connect"));
    let later = T0 + 10 * DEFAULT_TTL_MS;
    assert_eq!(s.prune(later), 0, "still connected");
    assert!(s.disconnect(&k, later));
    assert_eq!(s.get(&k).unwrap().reason.as_deref(), Some("disconnect"));
}

/// Connects `id` as a `ui` client and disconnects it at once: a row the
/// cap may evict.
fn left_row(store: &mut PresenceStore, id: &str, now: u64) -> PresenceKey {
    let k = connect_ui(store, id, now);
    assert!(store.disconnect(&k, now));
    k
}

#[test]
fn rule7_cap_drops_the_oldest_ts_first_never_self() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 3,
    });
    // The self entry is the oldest of all and still survives.
    for i in 0..4u64 {
        left_row(&mut s, &format!("inst-{i}"), T0 + 1_000 + i);
    }
    assert_eq!(s.len(), 3);
    assert!(s.get(&key("inst-0")).is_none());
    assert!(s.get(&key("inst-1")).is_none());
    assert!(s.get(&key("inst-2")).is_some());
    assert!(s.get(&key("inst-3")).is_some());
    let list = s.list(T0 + 2_000);
    assert_eq!(list.len(), 3);
    assert!(list.iter().any(|e| e.reason.as_deref() == Some("self")));
    // A beacon refreshing an old row makes it the newest.
    s.beacon(&key("inst-2"), &text_beacon("x"), None, T0 + 3_000);
    left_row(&mut s, "inst-4", T0 + 3_001);
    assert!(s.get(&key("inst-3")).is_none());
    assert!(s.get(&key("inst-2")).is_some());
    assert_eq!(s.cap_overshoot(), 0);
}

#[test]
fn rule7_cap_ties_are_broken_by_key() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 2,
    });
    // Rows without a connection (written by beacons), equally old.
    s.beacon(&key("b"), &text_beacon("b"), None, T0);
    s.beacon(&key("a"), &text_beacon("a"), None, T0);
    assert_eq!(s.len(), 2);
    assert!(s.get(&key("a")).is_none());
    assert!(s.get(&key("b")).is_some());
}

#[test]
fn rule7_a_live_row_is_never_evicted_the_oldest_left_row_goes_instead() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 3,
    });
    // The oldest row is live; a newer one has left.
    let live = connect_ui(&mut s, "live-old", T0);
    let gone = left_row(&mut s, "left-newer", T0 + 10);
    connect_ui(&mut s, "newest", T0 + 20);
    assert_eq!(s.len(), 3, "self + live-old + newest");
    assert!(s.get(&live).is_some(), "the oldest, but connected");
    assert!(s.get(&gone).is_none(), "the only row without a connection");
    assert_eq!(s.evictions().max, 1);
    assert_eq!(s.cap_overshoot(), 0);
}

#[test]
fn rule7_live_rows_alone_over_the_cap_all_stay_and_show_as_overshoot() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 3,
    });
    let keys: Vec<PresenceKey> = (0..5u64)
        .map(|i| connect_ui(&mut s, &format!("n{i}"), T0 + i))
        .collect();
    assert_eq!(s.len(), 6, "self + 5 live rows, cap 3");
    assert_eq!(s.cap_overshoot(), 3);
    assert_eq!(s.evictions().max, 0);
    assert_eq!(s.list(T0 + 10).len(), 6, "every live host is listed");
    // A beacon (a live node's own) changes nothing about that.
    s.beacon(&keys[0], &text_beacon("still here"), None, T0 + 11);
    assert_eq!(s.len(), 6);
    // A live row that leaves is the only evictable one: the cap takes it
    // at once, since the list is over the cap.
    assert!(s.disconnect(&keys[2], T0 + 12));
    assert!(s.get(&keys[2]).is_none());
    assert_eq!(s.evictions().max, 1);
    assert_eq!(s.cap_overshoot(), 2);
    // Down to the cap: a row that leaves now stays, as `disconnect`.
    for k in &keys[3..] {
        assert!(s.disconnect(k, T0 + 13));
    }
    assert_eq!(s.cap_overshoot(), 0);
    assert!(s.disconnect(&keys[1], T0 + 14));
    assert_eq!(s.len(), 3);
    assert_eq!(
        s.get(&keys[1]).and_then(|e| e.reason.as_deref()),
        Some("disconnect")
    );
}

#[test]
fn rule7_a_beacon_row_without_a_connection_is_evictable_a_live_one_is_not() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 2,
    });
    let live = connect_ui(&mut s, "live", T0);
    // An operator's beacon for a key nobody is connected as.
    s.beacon(&key("orphan"), &text_beacon("x"), None, T0 + 5);
    assert!(s.get(&key("orphan")).is_none(), "over the cap, not live");
    assert!(s.get(&live).is_some());
    assert_eq!(s.evictions().max, 1);
}

#[test]
fn evictions_are_counted_by_reason_and_statuses_by_age() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 4,
    });
    left_row(&mut s, "a", T0);
    left_row(&mut s, "b", T0 + 1);
    // c: a row only a beacon wrote (no connection, not departed).
    s.beacon(&key("c"), &text_beacon("c"), None, T0 + 2);
    connect_ui(&mut s, "d", T0 + 3);
    // Five rows, cap 4: the cap took a, the oldest row without a
    // connection.
    assert_eq!(s.evictions(), Evictions { ttl: 0, max: 1 }, "a, the oldest");
    assert!(s.get(&key("a")).is_none());
    // At +90.003 s: b has left (whatever its age); c (ts +2 ms) is just
    // past 90 s: Idle; d (ts +3 ms, live) is exactly 90 s old: Active.
    assert_eq!(s.status_counts(T0 + 90_003), [2, 1, 0, 1]);
    assert_eq!(
        s.status_counts(T0 + 200_000),
        [1, 0, 2, 1],
        "the self entry is current"
    );
    assert_eq!(s.prune(T0 + DEFAULT_TTL_MS + 10), 2, "b and c; d is live");
    assert_eq!(s.evictions(), Evictions { ttl: 2, max: 1 });
}

#[test]
fn left_is_the_status_of_a_disconnected_row_whatever_its_age() {
    let mut s = store();
    let k = connect_ui(&mut s, "x", T0);
    let live = s.get(&k).cloned().unwrap();
    assert_eq!(
        PresenceStatus::of_entry(&live, T0 + 1),
        PresenceStatus::Active
    );
    s.disconnect(&k, T0 + 1);
    let gone = s.get(&k).cloned().unwrap();
    assert_eq!(
        PresenceStatus::of_entry(&gone, T0 + 1),
        PresenceStatus::Left
    );
    assert_eq!(PresenceStatus::of(gone.ts, T0 + 1), PresenceStatus::Active);
}

#[test]
fn rule7_a_cap_of_one_keeps_self_and_live_rows_only() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: DEFAULT_TTL_MS,
        max_entries: 1,
    });
    let k = connect_ui(&mut s, "x", T0);
    assert_eq!(s.len(), 2, "live: kept over the cap");
    assert!(s.disconnect(&k, T0 + 1), "the row was there to leave");
    assert_eq!(s.len(), 1, "left: evicted at once");
    assert!(s.get(&k).is_none());
}

#[test]
fn rule8_loopback_is_127_8_v6_localhost_and_mapped_127() {
    assert!(is_loopback(v4(127, 0, 0, 1)));
    assert!(is_loopback(v4(127, 255, 3, 4)));
    assert!(is_loopback(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
    assert!(is_loopback("::ffff:127.9.9.9".parse().unwrap()));
    assert!(!is_loopback(v4(192, 0, 2, 1)));
    assert!(!is_loopback(v4(128, 0, 0, 1)));
    assert!(!is_loopback("::ffff:192.0.2.1".parse().unwrap()));
    assert!(!is_loopback("2001:db8::1".parse().unwrap()));
    assert!(!is_loopback(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
}

#[test]
fn rule8_loopback_remote_is_ignored_and_never_overwrites_a_reported_ip() {
    let mut s = store();
    let c = client("ui", Some("desk-1"));
    let over_loopback = |ip: IpAddr| ConnectionInfo {
        remote_ip: Some(ip),
        ..conn("c1", &c, &[])
    };
    let k = s.connect(&over_loopback(v4(127, 0, 0, 1)), T0).unwrap();
    assert_eq!(s.get(&k).unwrap().ip, None, "loopback does not fill ip");
    let reported = SystemEventParams {
        text: "x".into(),
        ip: Some("192.0.2.10".into()),
        ..SystemEventParams::default()
    };
    s.beacon(&k, &reported, Some(v4(127, 0, 0, 1)), T0 + 1);
    assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.10"));
    for ip in [
        v4(127, 0, 0, 1),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        "::ffff:127.0.0.1".parse().unwrap(),
    ] {
        s.disconnect(&k, T0 + 2);
        s.connect(&over_loopback(ip), T0 + 3).unwrap();
        let bare = SystemEventParams {
            text: "y".into(),
            ..SystemEventParams::default()
        };
        s.beacon(&k, &bare, Some(ip), T0 + 4);
        assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.10"), "{ip}");
    }
}

#[test]
fn rule8_non_loopback_remote_fills_ip_mapped_in_dotted_form() {
    let mut s = store();
    let c = client("ui", Some("desk-1"));
    let k = s
        .connect(
            &ConnectionInfo {
                remote_ip: Some("::ffff:192.0.2.7".parse().unwrap()),
                ..conn("c1", &c, &[])
            },
            T0,
        )
        .unwrap();
    assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.7"));

    // A beacon's remote fills ip only when the row has none.
    let bare = SystemEventParams {
        text: "x".into(),
        ..SystemEventParams::default()
    };
    s.beacon(&k, &bare, Some(v4(198, 51, 100, 1)), T0 + 1);
    assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.7"));
    let other = key("fresh");
    s.beacon(&other, &bare, Some("2001:db8::5".parse().unwrap()), T0 + 2);
    assert_eq!(s.get(&other).unwrap().ip.as_deref(), Some("2001:db8::5"));
}

#[test]
fn rule9_list_is_newest_first_with_deterministic_ties() {
    let mut s = store();
    connect_ui(&mut s, "old", T0 + 10);
    connect_ui(&mut s, "new", T0 + 30);
    connect_ui(&mut s, "mid-b", T0 + 20);
    connect_ui(&mut s, "mid-a", T0 + 20);
    let now = T0 + 25;
    let list = s.list(now);
    let order: Vec<&str> = list
        .iter()
        .map(|e| e.instance_id.as_deref().unwrap())
        .collect();
    assert_eq!(order, ["new", GW_INSTANCE, "mid-a", "mid-b", "old"]);
    // The self entry is first among equals.
    connect_ui(&mut s, "same-time", now + 5);
    assert_eq!(s.list(now + 5)[0].instance_id.as_deref(), Some(GW_INSTANCE));
}

#[test]
fn status_boundaries_are_90_and_180_seconds() {
    let of = |age: u64| PresenceStatus::of(T0, T0 + age);
    assert_eq!(of(0), PresenceStatus::Active);
    assert_eq!(of(90_000), PresenceStatus::Active);
    assert_eq!(of(90_001), PresenceStatus::Idle);
    assert_eq!(of(180_000), PresenceStatus::Idle);
    assert_eq!(of(180_001), PresenceStatus::Stale);
    assert_eq!(
        PresenceStatus::of(T0 + 5_000, T0),
        PresenceStatus::Active,
        "future ts"
    );
    assert_eq!(PresenceStatus::Active.as_str(), "Active");
    assert_eq!(PresenceStatus::Idle.as_str(), "Idle");
    assert_eq!(PresenceStatus::Stale.as_str(), "Stale");
}

#[test]
fn serialized_entries_have_no_nulls() {
    let mut s = store();
    let mut c = client("ui", Some("sparse"));
    c.display_name = None;
    c.device_family = None;
    c.model_identifier = None;
    s.connect(&conn("c1", &c, &[]), T0);
    s.beacon(&key("beacon-only"), &text_beacon("x"), None, T0);
    let text = serde_json::to_string(&s.list(T0 + 1)).unwrap();
    assert!(!text.contains("null"), "{text}");
    assert!(!text.contains("lastInputSeconds"), "{text}");
    assert!(!text.contains("scopes"), "{text}");
}

/// `list_json` is the serialized `list`, byte for byte, through a long
/// random mix of every operation (so no write path misses dropping a
/// row's cached JSON), with a small cap so eviction is exercised.
#[test]
fn list_json_matches_the_serialized_list_through_random_operations() {
    let mut s = store_with(PresenceLimits {
        ttl_ms: 5_000,
        max_entries: 12,
    });
    // A fixed xorshift sequence: repeatable, no extra crate.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut now = T0;
    let mut open: Vec<PresenceKey> = Vec::new();
    for step in 0..5_000 {
        now += next(700);
        if next(50) == 0 {
            // The wall clock stepped back: rows are newer than now.
            now -= 2_000;
        }
        let id = format!("Node-{}", next(20));
        match next(6) {
            0 => open.push(connect_ui(&mut s, &id, now)),
            1 if !open.is_empty() => {
                let k = open.swap_remove(next(open.len() as u64) as usize);
                s.disconnect(&k, now);
            }
            2 => {
                let mut b = text_beacon(&format!("beacon {step}"));
                b.host = Some(format!("h{step}"));
                b.last_input_seconds = Some(next(100));
                s.beacon(&key(&id), &b, Some(v4(10, 0, 0, 1)), now);
            }
            3 => {
                s.touch_connected(now);
            }
            4 => {
                s.prune(now);
            }
            _ => {}
        }
        let json = s.list_json(now);
        let expected = serde_json::to_string(&s.list(now)).unwrap();
        assert_eq!(json, expected, "step {step}");
        // Rule 7: no live row is ever gone, and the list is over the cap
        // only by live rows.
        assert!(open.iter().all(|k| s.get(k).is_some()), "step {step}");
        let live = s.open_connections.len();
        assert!(s.len() <= 12 || s.len() == live + 1, "step {step}");
    }
}

/// An operator's label belongs to the device: every row of the device
/// shows it (in the cached JSON too), beacons and reconnects keep it,
/// other devices' rows never get it, and dropping it drops it everywhere.
#[test]
fn a_device_label_shows_on_every_row_of_the_device_and_only_there() {
    let mut s = store();
    let a = connect_ui(&mut s, "desk-1", T0);
    let c = client("ui", Some("other-1"));
    let other = s
        .connect(
            &ConnectionInfo {
                device_id: Some("dev-other"),
                ..conn("c2", &c, &[])
            },
            T0,
        )
        .unwrap();
    // The JSON of the list is cached before the label: it must be redone.
    assert!(!s.list_json(T0).contains("operatorLabel"));
    assert!(s.label_device("dev-ui", Some("rack 4")));
    assert!(!s.label_device("dev-ui", Some("rack 4")), "no change twice");
    assert_eq!(s.get(&a).unwrap().operator_label.as_deref(), Some("rack 4"));
    assert_eq!(s.get(&other).unwrap().operator_label, None);
    let json = s.list_json(T0 + 1);
    assert_eq!(
        json.matches("\"operatorLabel\":\"rack 4\"").count(),
        1,
        "{json}"
    );
    assert_eq!(json, serde_json::to_string(&s.list(T0 + 1)).unwrap());

    s.beacon(&a, &text_beacon("still here"), None, T0 + 2);
    connect_ui(&mut s, "desk-1", T0 + 3);
    assert_eq!(s.get(&a).unwrap().operator_label.as_deref(), Some("rack 4"));

    // Set per row (the gateway, after a connect), and dropped.
    assert!(s.set_operator_label(&other, Some("spare")));
    assert!(!s.set_operator_label(&other, Some("spare")));
    assert!(s.label_device("dev-ui", None));
    let json = s.list_json(T0 + 4);
    assert!(!json.contains("rack 4") && json.contains("spare"), "{json}");
    assert!(!s.set_operator_label(&key("absent"), Some("x")));
}
