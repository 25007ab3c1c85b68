//! Multi-host: the gateway runs in its own network namespace, reached over a
//! veth pair, so clients arrive from a real non-loopback address (rule 8).
//! Uses TEST-NET-2 addresses on links this test creates and removes.
//! Needs root: ignored by a plain `cargo test`, run by `.ci/run` with
//! `-- --ignored`.

mod common;

use common::netns::Netns;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (network namespaces): see README"]
async fn a_remote_address_fills_ip_and_a_reported_ip_wins() {
    common::netns::require_root("network namespaces");
    let ns = Netns::create(0);
    let listen = format!("{}:0", ns.ns_addr);
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let proc = Proc::spawn_cmd(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            BIN,
            "run",
            "--gateway",
            "--listen",
            &listen,
            "--state-dir",
            dir,
        ],
    );
    let line = proc.wait_for_log("gateway listening", std::time::Duration::from_secs(20));
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .parse()
        .unwrap();
    let url = format!("ws://{addr}");
    let token = clawnode::config::read_token_file(&state.path().join("operator.token")).unwrap();

    let connect = |iid: &'static str| {
        let url = url.clone();
        let token = token.clone();
        async move {
            let mut c = RawClient::open(&url).await;
            match c
                .connect(&operator_params(
                    "ui",
                    Some(iid),
                    &["operator.write"],
                    Some(&token),
                ))
                .await
            {
                Outcome::Hello(h) => (c, h),
                other => panic!("{other:?}"),
            }
        }
    };
    let (mut c, hello) = connect("far-host").await;
    let row = |list: &[clawnode::protocol::PresenceEntry]| {
        list.iter()
            .find(|e| e.instance_id.as_deref() == Some("far-host"))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        row(&hello.snapshot.presence).ip.as_deref(),
        Some(ns.host_addr.as_str()),
        "the remote address fills ip"
    );

    // A reported IP wins over the remote address...
    c.call(
        "system-event",
        json!({"text": "beacon", "ip": "203.0.113.7"}),
    )
    .await
    .unwrap();
    let list: Vec<clawnode::protocol::PresenceEntry> =
        serde_json::from_value(c.call("system-presence", json!({})).await.unwrap()).unwrap();
    assert_eq!(row(&list).ip.as_deref(), Some("203.0.113.7"));
    // ...and a beacon without one keeps it.
    c.call("system-event", json!({"text": "beacon 2"}))
        .await
        .unwrap();
    let list: Vec<clawnode::protocol::PresenceEntry> =
        serde_json::from_value(c.call("system-presence", json!({})).await.unwrap()).unwrap();
    assert_eq!(row(&list).ip.as_deref(), Some("203.0.113.7"));
    drop(c);
    drop(proc);
}
