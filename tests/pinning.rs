//! Pinning covers every presence key a client can claim (issue 15, finding
//! 7), with the real binary: a row keyed by a device id belongs to that
//! device, and the row of an operator without a device (the Instances
//! page) lives where no node can claim it.

mod common;

use clawnode::identity::DeviceIdentity;
use clawnode::protocol::PresenceEntry;
use common::node::connect_node;
use common::*;

fn roles(e: &PresenceEntry) -> Vec<String> {
    e.roles.clone().unwrap_or_default()
}

fn refused_as_pinned(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::Error(e, _) => assert_eq!(
            e.detail_code_str(),
            Some("INSTANCE_ID_PINNED"),
            "{what}: {e:?}"
        ),
        other => panic!("{what} was let in: {other:?}"),
    }
}

/// A node that sends no `instanceId` has a row keyed by its device id —
/// which every node reads in `system-presence`. Another key claiming that
/// id as its `instanceId` is refused like any pinned instance id, and an
/// operator without a device that claims it gets a row of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_keyed_by_a_device_id_belongs_to_that_device() {
    let gw = TestGateway::start(&[]);
    let victim = DeviceIdentity::ephemeral("unused");
    let victim_id = victim.device_id().to_string();
    let (_victim_conn, outcome) = connect_node(&gw, &victim, "victim", None).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");

    let attacker = DeviceIdentity::ephemeral("unused");
    let (_, outcome) = connect_node(&gw, &attacker, "attacker", Some(&victim_id)).await;
    refused_as_pinned(outcome, "another key claiming the victim's device id");
    // Instance ids match case-insensitively: so does the refusal.
    let upper = victim_id.to_uppercase();
    let (_, outcome) = connect_node(&gw, &attacker, "attacker", Some(&upper)).await;
    refused_as_pinned(outcome, "the upper-case device id");

    // An operator without a device claiming the device id as its instance
    // id: its row is its own, the victim's row is untouched.
    let _op = open_operator(&gw, "ui", Some(&victim_id), &["operator.read"]).await;
    let list = gw.presence().await;
    let victim_rows: Vec<_> = list
        .iter()
        .filter(|e| e.device_id.as_deref() == Some(victim_id.as_str()))
        .collect();
    assert_eq!(victim_rows.len(), 1, "{list:#?}");
    let row = victim_rows[0];
    assert_eq!(row.host.as_deref(), Some("victim"), "{row:#?}");
    assert_eq!(row.mode.as_deref(), Some("node"), "{row:#?}");
    assert_eq!(roles(row), ["node"], "{row:#?}");
    assert!(
        list.iter().all(|e| e.host.as_deref() != Some("attacker")),
        "{list:#?}"
    );

    // The victim itself reconnects to its row.
    drop(_victim_conn);
    let (_again, outcome) = connect_node(&gw, &victim, "victim", None).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
}

/// The Instances page is an operator without a device identity: nothing to
/// pin its `instanceId` to. A node claiming the page's `instanceId` (it is
/// in every `system-presence` answer) must neither merge into the page's
/// row nor lock the page out of its own row.
#[tokio::test(flavor = "multi_thread")]
async fn the_instances_page_row_cannot_be_squatted_by_a_node() {
    let gw = TestGateway::start(&[]);
    let page_id = "5b0c6d2e-6f7a-4e3b-9a51-0c2d3e4f5a6b";
    let page = open_operator(&gw, "ui", Some(page_id), &["operator.read"]).await;

    let squatter = DeviceIdentity::ephemeral("unused");
    let squatter_id = squatter.device_id().to_string();
    let (_squat, _) = connect_node(&gw, &squatter, "squatter", Some(page_id)).await;

    // The page reloads: it gets its row back.
    drop(page);
    let mut again = RawClient::open(&gw.url()).await;
    let outcome = again
        .connect(&operator_params(
            "ui",
            Some(page_id),
            &["operator.read"],
            Some(&gw.operator_token()),
        ))
        .await;
    assert!(
        matches!(outcome, Outcome::Hello(_)),
        "the page was locked out of its own row: {outcome:?}"
    );

    let list = gw.presence().await;
    let page_rows: Vec<_> = list
        .iter()
        .filter(|e| e.instance_id.as_deref() == Some(page_id) && e.device_id.is_none())
        .collect();
    assert_eq!(page_rows.len(), 1, "{list:#?}");
    assert_eq!(roles(page_rows[0]), ["operator"], "{list:#?}");
    assert_ne!(page_rows[0].reason.as_deref(), Some("disconnect"));
    // Whatever the squatter was told, its row (if any) is its own.
    for row in list
        .iter()
        .filter(|e| e.device_id.as_deref() == Some(squatter_id.as_str()))
    {
        assert_eq!(roles(row), ["node"], "{row:#?}");
        assert_eq!(row.host.as_deref(), Some("squatter"), "{row:#?}");
    }
}

/// The `pins.json` of an earlier version: `pins` instance ids of made-up
/// devices, plus `inst-owner` pinned to `owner`.
fn write_pins_json(state: &std::path::Path, owner: &DeviceIdentity, pins: usize) {
    let mut map = serde_json::Map::new();
    for i in 0..pins {
        map.insert(
            format!("inst-{i}"),
            serde_json::json!({"deviceId": format!("{i:064x}"), "pinnedAtMs": 1_700_000_000_000u64 + i as u64}),
        );
    }
    map.insert(
        "Inst-Owner".into(),
        serde_json::json!({"deviceId": owner.device_id(), "pinnedAtMs": 1_700_000_000_000u64, "displayName": "owner-host"}),
    );
    let file = serde_json::json!({"version": 1, "pins": map});
    std::fs::write(state.join("pins.json"), file.to_string()).unwrap();
}

/// Upgrading: an earlier version's `pins.json` is imported into the
/// registry on the first start (every pin), then kept as
/// `pins.json.migrated`; its pins hold across restarts.
#[tokio::test(flavor = "multi_thread")]
async fn an_earlier_pins_json_is_migrated_with_every_pin() {
    let state = tempfile::tempdir().unwrap();
    let owner = DeviceIdentity::ephemeral("unused");
    let other = DeviceIdentity::ephemeral("unused");
    write_pins_json(state.path(), &owner, 2_000);

    let mut gw = TestGateway::start_at(state.path(), &[]);
    let line = gw
        .proc
        .wait_for_log("imported into the device registry", RAW_WAIT);
    assert!(line.contains("pins=2001"), "{line}");
    assert!(!state.path().join("pins.json").exists());
    assert!(state.path().join("pins.json.migrated").exists());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(state.path().join("registry.sqlite"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "registry.sqlite mode {mode:o}");

    for _restart in 0..2 {
        // A migrated pin refuses another key (case-insensitively) ...
        let (_, outcome) = connect_node(&gw, &other, "other", Some("inst-owner")).await;
        refused_as_pinned(outcome, "another key claiming a migrated pin");
        let (_, outcome) = connect_node(&gw, &other, "other", Some("inst-1999")).await;
        refused_as_pinned(outcome, "another key claiming the last migrated pin");
        // ... and lets its own device in.
        let (_c, outcome) = connect_node(&gw, &owner, "owner-host", Some("inst-owner")).await;
        assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
        let listen = gw.addr.to_string();
        let _ = gw.proc.terminate();
        gw = TestGateway::start_at(state.path(), &["--listen", &listen]);
    }
    assert_eq!(gw.proc.count_log("imported into the device registry"), 0);
}

/// A new pin is stored before the `hello-ok` that follows it: a gateway
/// killed (SIGKILL) right after a burst of first connections has every one
/// of their pins when it comes back.
#[tokio::test(flavor = "multi_thread")]
async fn pins_survive_a_sigkill_right_after_the_handshakes() {
    const HOSTS: usize = 50;
    let state = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(state.path(), &[]);
    let listen = gw.addr.to_string();
    let hosts: Vec<DeviceIdentity> = (0..HOSTS)
        .map(|_| DeviceIdentity::ephemeral("unused"))
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        let id = format!("killed-{i}");
        let (_, outcome) = connect_node(&gw, host, "host", Some(&id)).await;
        assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
    }
    gw.proc.signal(libc::SIGKILL);
    gw.proc.wait_exit(RAW_WAIT);

    let gw = TestGateway::start_at(state.path(), &["--listen", &listen]);
    let intruder = DeviceIdentity::ephemeral("unused");
    let mut kept = 0;
    for i in 0..HOSTS {
        let id = format!("killed-{i}");
        if let (_, Outcome::Error(e, _)) = connect_node(&gw, &intruder, "intruder", Some(&id)).await
        {
            if e.detail_code_str() == Some("INSTANCE_ID_PINNED") {
                kept += 1;
            }
        }
    }
    assert_eq!(kept, HOSTS, "pins kept across SIGKILL");
}
