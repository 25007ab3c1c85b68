//! A bound on simultaneous connections per device and per presence row
//! (issue 15, finding 10), with the real binary: one key opening 50
//! connections holds at most `max_connections_per_device` of them; the
//! newest are kept and the oldest are closed with a reason that says so.

mod common;

use std::time::{Duration, Instant};

use clawnode::identity::DeviceIdentity;
use common::node::connect_node;
use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// `health.connections` as `client` sees it, polled until `ok` holds
/// (within [`RAW_WAIT`]); the last count either way.
async fn connections_until(client: &mut RawClient, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + RAW_WAIT;
    loop {
        let health = client.call("health", Value::Null).await.expect("health");
        let n = health["connections"].as_u64().expect("connections");
        if ok(n) || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_device_key_holds_at_most_its_bound_of_connections() {
    const BOUND: u64 = 4; // the default max_connections_per_device
    let gw = TestGateway::start(&[]);
    let identity = DeviceIdentity::ephemeral("unused");
    let mut conns = Vec::new();
    for i in 0..50 {
        let (c, outcome) = connect_node(&gw, &identity, "flood", Some("inst-flood")).await;
        // A reconnect is always let in: the newest connection wins.
        assert!(
            matches!(outcome, Outcome::Hello(_)),
            "connection {i}: {outcome:?}"
        );
        conns.push(c);
    }
    // The newest connection is alive and sees the gateway hold no more
    // than the bound.
    let newest = conns.last_mut().expect("connections");
    let held = connections_until(newest, |n| n <= BOUND).await;
    assert!(
        held <= BOUND,
        "one key holds {held} connections (bound {BOUND})"
    );
    // The oldest was told why it was closed.
    let close = conns[0].read_close().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    assert!(close.reason.contains("replaced"), "{close:?}");

    // One presence row for all of them, still connected.
    let list = gw.presence().await;
    let rows: Vec<_> = list
        .iter()
        .filter(|e| e.instance_id.as_deref() == Some("inst-flood"))
        .collect();
    assert_eq!(rows.len(), 1, "{list:#?}");
    assert_ne!(rows[0].reason.as_deref(), Some("disconnect"), "{list:#?}");
}

/// Operators without a device share a row by `instanceId` (tabs of one
/// browser): the same bound holds per row.
#[tokio::test(flavor = "multi_thread")]
async fn one_instance_id_without_a_device_holds_at_most_the_bound() {
    let gw = TestGateway::start(&[]);
    let mut tabs = Vec::new();
    for _ in 0..10 {
        tabs.push(open_operator(&gw, "ui", Some("page-tabs"), &["operator.read"]).await);
    }
    let newest = tabs.last_mut().expect("tabs");
    let held = connections_until(newest, |n| n <= 4).await;
    assert!(
        held <= 4,
        "one instance id holds {held} connections (bound 4)"
    );
    let close = tabs[0].read_close().await.expect("a close frame");
    assert!(close.reason.contains("replaced"), "{close:?}");
}

/// The bound is `[gateway] max_connections_per_device`.
#[tokio::test(flavor = "multi_thread")]
async fn the_bound_is_configurable() {
    let gw = TestGateway::start_with_config("[gateway]\nmax_connections_per_device = 1\n");
    let identity = DeviceIdentity::ephemeral("unused");
    let (mut first, _) = connect_node(&gw, &identity, "one", None).await;
    let (mut second, outcome) = connect_node(&gw, &identity, "one", None).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
    let close = first.read_close().await.expect("a close frame");
    assert!(close.reason.contains("replaced"), "{close:?}");
    assert_eq!(connections_until(&mut second, |n| n <= 1).await, 1);
}
