//! End to end: the real binary as gateway and agents on loopback.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn identity_of(state: &std::path::Path) -> Value {
    let (code, out, err) = run_cli(&["identity", "--state-dir", state.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_appears_with_its_hardware_hints_next_to_the_gateway_self_entry() {
    let gw = TestGateway::start(&[]);
    let a = tempfile::tempdir().unwrap();
    let _agent = gw.agent(a.path(), &["--display-name", "node-a"]);
    let id = identity_of(a.path());
    let list = gw
        .wait_presence("the agent's beacon", |l| {
            l.iter().any(|e| {
                e.host.as_deref() == Some("node-a") && e.reason.as_deref() == Some("periodic")
            })
        })
        .await;
    let me = list
        .iter()
        .find(|e| e.host.as_deref() == Some("node-a"))
        .unwrap();
    assert_eq!(me.instance_id.as_deref(), id["instanceId"].as_str());
    assert_eq!(me.device_id.as_deref(), id["deviceId"].as_str());
    assert_eq!(me.mode.as_deref(), Some("node"));
    assert_eq!(me.roles.as_deref(), Some(&["node".to_string()][..]));
    assert_eq!(me.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(
        me.platform.as_deref().unwrap().starts_with("linux "),
        "{me:?}"
    );
    assert_eq!(me.device_family.as_deref(), Some("Linux"));
    assert!(!me.model_identifier.as_deref().unwrap().is_empty());
    // The agent connects over loopback: the IP is the one it reported, never 127.x.
    if let Some(ip) = &me.ip {
        assert!(!ip.starts_with("127."), "{me:?}");
    }
    assert!(
        me.text.as_deref().unwrap().starts_with("Node: node-a"),
        "{me:?}"
    );

    let gw_row = list
        .iter()
        .find(|e| e.reason.as_deref() == Some("self"))
        .expect("self entry");
    assert_eq!(gw_row.mode.as_deref(), Some("gateway"));
    let gw_id = identity_of(&gw.state_dir);
    assert_eq!(gw_row.instance_id.as_deref(), gw_id["instanceId"].as_str());

    // The CLI table shows both rows as Active.
    let (code, out, err) = gw.presence_cli(&[]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].contains("STATUS"), "{out}");
    assert!(
        rows.iter()
            .any(|r| r.contains("node-a") && r.contains("Active")),
        "{out}"
    );
    // The gateway's row first (the table has no REASON column since the
    // operator view, issue 7; sorting puts the gateway on top).
    assert!(
        rows[1].starts_with("Active") && rows[1].contains("gateway"),
        "{out}"
    );

    // --json prints exactly the system-presence payload.
    let (code, out, _) = gw.presence_cli(&["--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().unwrap().len() >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_agent_keeps_its_instance_id_and_one_row() {
    let gw = TestGateway::start(&[]);
    let a = tempfile::tempdir().unwrap();
    let mut agent = gw.agent(a.path(), &["--display-name", "node-r"]);
    let id = identity_of(a.path());
    let iid = id["instanceId"].as_str().unwrap().to_string();
    gw.wait_presence("agent", |l| {
        l.iter().any(|e| {
            e.instance_id.as_deref() == Some(&iid) && e.reason.as_deref() == Some("periodic")
        })
    })
    .await;

    let (code, took) = agent.terminate();
    assert_eq!(code, Some(0), "{}", agent.proc_log());
    assert!(took < Duration::from_secs(2), "SIGTERM took {took:?}");
    gw.wait_presence("disconnect", |l| {
        l.iter().any(|e| {
            e.instance_id.as_deref() == Some(&iid) && e.reason.as_deref() == Some("disconnect")
        })
    })
    .await;

    let _agent = gw.agent(a.path(), &["--display-name", "node-r"]);
    let list = gw
        .wait_presence("reconnected agent", |l| {
            l.iter().any(|e| {
                e.instance_id.as_deref() == Some(&iid) && e.reason.as_deref() == Some("periodic")
            })
        })
        .await;
    assert_eq!(
        list.iter()
            .filter(|e| e.host.as_deref() == Some("node-r"))
            .count(),
        1,
        "{list:#?}"
    );
    assert_eq!(identity_of(a.path())["deviceId"], id["deviceId"]);
}

trait ProcLog {
    fn proc_log(&self) -> String;
}
impl ProcLog for Proc {
    fn proc_log(&self) -> String {
        self.log_text()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_clients_never_become_rows() {
    let gw = TestGateway::start(&[]);
    for _ in 0..3 {
        let (code, _, err) = gw.presence_cli(&["--json"]);
        assert_eq!(code, 0, "{err}");
    }
    // A cli-mode operator that stays connected leaves no row either.
    let _held = open_operator(&gw, "cli", Some("cli-instance"), &["operator.read"]).await;
    let list = gw.presence().await;
    assert_eq!(list.len(), 1, "only the self entry: {list:#?}");
    assert_eq!(list[0].reason.as_deref(), Some("self"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_case_variants_of_one_instance_id_give_one_row() {
    let gw = TestGateway::start(&[]);
    let _a = open_operator(&gw, "ui", Some("Mac-Studio-1"), &["operator.read"]).await;
    let _b = open_operator(&gw, "ui", Some("  mac-studio-1 "), &["operator.read"]).await;
    let list = gw.presence().await;
    let rows: Vec<_> = list
        .iter()
        .filter(|e| e.mode.as_deref() == Some("ui"))
        .collect();
    assert_eq!(rows.len(), 1, "{list:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_beacon_updates_last_input_seconds_and_loopback_never_overwrites_the_reported_ip() {
    let gw = TestGateway::start(&[]);
    let mut c = open_operator(&gw, "ui", Some("desk-1"), &["operator.write"]).await;
    // Connected over loopback: the row has no IP.
    let row = |l: &[clawnode::protocol::PresenceEntry]| {
        l.iter()
            .find(|e| e.instance_id.as_deref() == Some("desk-1"))
            .cloned()
    };
    let list = gw.presence().await;
    assert_eq!(
        row(&list).unwrap().ip,
        None,
        "loopback address must not fill ip"
    );

    c.call("system-event", json!({"text": "Node: desk (192.0.2.10) · app 1 · last input 42s ago · mode ui · reason periodic", "lastInputSeconds": 42, "ip": "192.0.2.10", "reason": "periodic"}))
        .await
        .unwrap();
    let r = row(&gw.presence().await).unwrap();
    assert_eq!(r.last_input_seconds, Some(42));
    assert_eq!(r.ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(r.reason.as_deref(), Some("periodic"));

    c.call(
        "system-event",
        json!({"text": "again", "lastInputSeconds": 3}),
    )
    .await
    .unwrap();
    let r = row(&gw.presence().await).unwrap();
    assert_eq!(r.last_input_seconds, Some(3));
    assert_eq!(r.ip.as_deref(), Some("192.0.2.10"), "kept");

    // Reconnecting over loopback keeps the reported IP.
    drop(c);
    let _c2 = open_operator(&gw, "ui", Some("desk-1"), &["operator.read"]).await;
    let r = row(&gw.presence().await).unwrap();
    assert_eq!(r.reason.as_deref(), Some("connect"));
    assert_eq!(r.ip.as_deref(), Some("192.0.2.10"));
}

#[tokio::test(flavor = "multi_thread")]
async fn beacons_for_other_keys_need_operator_admin() {
    let gw = TestGateway::start(&[]);
    let mut w = open_operator(&gw, "ui", Some("w-1"), &["operator.write"]).await;
    let err = w
        .call(
            "system-event",
            json!({"text": "x", "instanceId": "someone-else"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "FORBIDDEN");
    let mut r = open_operator(&gw, "ui", Some("r-1"), &["operator.read"]).await;
    let err = r
        .call("system-event", json!({"text": "x"}))
        .await
        .unwrap_err();
    assert_eq!(err.code.as_str(), "FORBIDDEN");
    let mut admin = open_operator(&gw, "ui", Some("admin-1"), &["operator.admin"]).await;
    admin
        .call(
            "system-event",
            json!({"text": "x", "instanceId": "Someone-Else", "host": "far"}),
        )
        .await
        .unwrap();
    let list = gw.presence().await;
    assert!(
        list.iter()
            .any(|e| e.instance_id.as_deref() == Some("Someone-Else")
                && e.host.as_deref() == Some("far")),
        "{list:#?}"
    );
}

/// Rule 7 as part 7 changes it: the cap evicts the oldest row without a
/// connection, never the self entry and never a connected client, even
/// when that client's row is the oldest.
#[tokio::test(flavor = "multi_thread")]
async fn eviction_at_max_entries_drops_the_oldest_departed_row_never_self_or_a_live_one() {
    let gw = TestGateway::start(&["--presence-max-entries", "3"]);
    let _live = open_operator(&gw, "ui", Some("inst-0"), &["operator.read"]).await;
    for i in 1..4 {
        let id = format!("inst-{i}");
        let c = open_operator(&gw, "ui", Some(&id), &["operator.read"]).await;
        drop(c);
        gw.wait_presence_within(
            &format!("{id} left (or evicted)"),
            Duration::from_secs(10),
            |l| {
                !l.iter().any(|e| {
                    e.instance_id.as_deref() == Some(id.as_str())
                        && e.reason.as_deref() != Some("disconnect")
                })
            },
        )
        .await;
    }
    let list = gw.presence().await;
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(list.iter().any(|e| e.reason.as_deref() == Some("self")));
    let ids: Vec<_> = list.iter().filter_map(|e| e.instance_id.clone()).collect();
    assert!(
        ids.contains(&"inst-0".to_string()),
        "the oldest row, but connected: {ids:?}"
    );
    assert!(
        ids.contains(&"inst-3".to_string()),
        "the newest departed: {ids:?}"
    );
    assert!(
        !ids.contains(&"inst-1".to_string()) && !ids.contains(&"inst-2".to_string()),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_prunes_disconnected_rows_but_never_connected_ones() {
    let gw = TestGateway::start(&["--presence-ttl-secs", "1"]);
    let leaver = open_operator(&gw, "ui", Some("leaver"), &["operator.read"]).await;
    let _stayer = open_operator(&gw, "ui", Some("stayer"), &["operator.read"]).await;
    drop(leaver);
    gw.wait_presence("leaver disconnected", |l| {
        l.iter().any(|e| {
            e.instance_id.as_deref() == Some("leaver") && e.reason.as_deref() == Some("disconnect")
        })
    })
    .await;
    let list = gw
        .wait_presence_within(
            "the leaver's row pruned after the 1 s TTL",
            Duration::from_secs(10),
            |l| !l.iter().any(|e| e.instance_id.as_deref() == Some("leaver")),
        )
        .await;
    // The stayer's row dates from before the leaver left, so it is past the
    // TTL too; it stays because it is connected.
    assert!(
        list.iter()
            .any(|e| e.instance_id.as_deref() == Some("stayer")),
        "{list:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_list_shows_the_agents_host_stats() {
    let gw = TestGateway::start(&[]);
    let a = tempfile::tempdir().unwrap();
    let _agent = gw.agent(a.path(), &["--display-name", "stats-node"]);
    let id = identity_of(a.path());
    let mut op = open_operator(&gw, "ui", Some("viewer"), &["operator.read"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let node = loop {
        let v = op.call("node.list", json!({})).await.unwrap();
        let found = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["displayName"] == "stats-node" && n.get("hostStats").is_some())
            .cloned();
        if let Some(n) = found {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no host stats in node.list: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(node["nodeId"], id["deviceId"]);
    assert_eq!(node["connected"], true);
    assert_eq!(node["deviceFamily"], "Linux");
    let stats = &node["hostStats"];
    assert!(stats["cpuCount"].as_u64().unwrap() >= 1);
    assert!(stats["memoryTotalBytes"].as_u64().unwrap() > 0);
    assert!(stats["updatedAtMs"].as_u64().unwrap() > 0);

    // Operators may not send node events; nodes are checked in handshake_errors.
    let e = op
        .call(
            "node.event",
            json!({"event": "node.host.stats", "payload": {}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_sets_the_tick_interval_and_every_client_gets_ticks() {
    let gw = TestGateway::start_with_config("[gateway]\ntick_interval_secs = 1\n");
    let mut c = RawClient::open(&gw.url()).await;
    let hello = match c
        .connect(&operator_params(
            "ui",
            Some("ticker"),
            &["operator.read"],
            Some(&gw.operator_token()),
        ))
        .await
    {
        Outcome::Hello(h) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(hello.policy.tick_interval_ms, 1000);
    let started = std::time::Instant::now();
    let t1 = c.next_event("tick").await.expect("tick");
    let t2 = c.next_event("tick").await.expect("tick");
    assert!(t2.seq > t1.seq);
    assert!(t2.payload["ts"].as_u64() > t1.payload["ts"].as_u64());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_beacons_are_refused_and_the_row_is_kept() {
    let gw = TestGateway::start(&[]);
    let mut c = open_operator(&gw, "ui", Some("big-1"), &["operator.write"]).await;
    c.call("system-event", json!({"text": "fine", "host": "h1"}))
        .await
        .unwrap();
    let e = c
        .call("system-event", json!({"text": "x".repeat(5000)}))
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "INVALID_REQUEST");
    assert!(e.message.contains("text"), "{e}");
    let e = c
        .call(
            "system-event",
            json!({"text": "ok", "host": "h".repeat(300)}),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("host"), "{e}");
    let list = gw.presence().await;
    let row = list
        .iter()
        .find(|r| r.instance_id.as_deref() == Some("big-1"))
        .unwrap();
    assert_eq!(row.host.as_deref(), Some("h1"));
    assert_eq!(row.text.as_deref(), Some("fine"));
}
