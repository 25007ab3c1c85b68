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

/// Every pin of a `pins.json` as the registry holds it, read-only:
/// `key → (device id, pinned at, host name)`.
fn registry_pins(
    state: &std::path::Path,
) -> std::collections::BTreeMap<String, (String, u64, Option<String>)> {
    let db = rusqlite::Connection::open_with_flags(
        state.join("registry.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the registry opens read-only");
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut statement = db
        .prepare("SELECT instance_id, device_id, claimed_at_ms, display_name FROM instances")
        .unwrap();
    let rows = statement
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// A `pins.json` as earlier versions wrote it, both kinds of keys: 2,000
/// instance ids (mixed case) of made-up devices, 300 rows keyed by their
/// own device id (clients that sent no `instanceId`), and two real
/// devices: `owner` by instance id, `bare` by its device id.
fn write_mixed_pins_json(
    state: &std::path::Path,
    owner: &DeviceIdentity,
    bare: &DeviceIdentity,
) -> std::collections::BTreeMap<String, (String, u64, Option<String>)> {
    let mut pins = std::collections::BTreeMap::new();
    let mut file = serde_json::Map::new();
    let mut add = |key: String, device: String, at: u64, name: Option<String>| {
        let mut pin = serde_json::json!({"deviceId": device, "pinnedAtMs": at});
        if let Some(name) = &name {
            pin["displayName"] = name.clone().into();
        }
        file.insert(key.clone(), pin);
        pins.insert(key.to_lowercase(), (device, at, name));
    };
    for i in 0..2_000u64 {
        let key = if i % 2 == 0 {
            format!("Inst-{i}")
        } else {
            format!("inst-{i}")
        };
        add(
            key,
            format!("{i:064x}"),
            1_700_000_000_000 + i,
            Some(format!("host-{i}")),
        );
    }
    for j in 0..300u64 {
        let id = format!("{:064x}", 1_000_000 + j);
        add(id.clone(), id, 1_700_000_100_000 + j, None);
    }
    add(
        "Owner-Instance".into(),
        owner.device_id().into(),
        1_700_000_200_000,
        Some("owner-host".into()),
    );
    add(
        bare.device_id().into(),
        bare.device_id().into(),
        1_700_000_300_000,
        Some("bare-host".into()),
    );
    let json = serde_json::json!({"version": 1, "pins": file});
    std::fs::write(state.join("pins.json"), json.to_string()).unwrap();
    pins
}

/// The migration from `pins.json` keeps every pin — instance-id and
/// device-id keyed alike, with its device, time and host name — through
/// the real binary; the pins bite (another key is refused, the owner gets
/// in); and a later start never imports the file again, even when it is
/// put back (a rename that failed, a restored backup): a pin forgotten
/// since stays forgotten.
#[tokio::test(flavor = "multi_thread")]
async fn a_pins_json_with_both_kinds_of_keys_is_migrated_whole_and_only_once() {
    let state = tempfile::tempdir().unwrap();
    let owner = DeviceIdentity::ephemeral("unused");
    let bare = DeviceIdentity::ephemeral("unused");
    let intruder = DeviceIdentity::ephemeral("unused");
    let expected = write_mixed_pins_json(state.path(), &owner, &bare);
    let original = std::fs::read(state.path().join("pins.json")).unwrap();

    let mut gw = TestGateway::start_at(state.path(), &[]);
    let listen = gw.addr.to_string();
    let line = gw
        .proc
        .wait_for_log("imported into the device registry", RAW_WAIT);
    assert!(
        line.contains("pins=2302") && line.contains("added=2302"),
        "{line}"
    );
    // Through the gateway: both kinds of keys refuse another key ...
    for key in [
        "owner-instance",
        "OWNER-INSTANCE",
        bare.device_id(),
        "inst-1999",
    ] {
        let (_, outcome) = connect_node(&gw, &intruder, "intruder", Some(key)).await;
        refused_as_pinned(outcome, &format!("another key claiming migrated {key}"));
    }
    let made_up = format!("{:064x}", 1_000_299);
    let (_, outcome) = connect_node(&gw, &intruder, "intruder", Some(&made_up)).await;
    refused_as_pinned(outcome, "another key claiming a migrated device-id key");
    // ... and let their devices in: by instance id, and by its own id.
    let (_o, outcome) = connect_node(&gw, &owner, "owner-host", Some("Owner-Instance")).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
    let (_b, outcome) = connect_node(&gw, &bare, "bare-host", None).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
    drop((_o, _b));

    // Forget one migrated pin, then stop: every other pin is stored as it
    // was in the file (the gateway's own pin besides).
    let (code, _, err) = gw.operator_cli(&["forget"], &["inst-5"]);
    assert_eq!(code, 0, "{err}");
    gw.proc.terminate();
    let mut stored = registry_pins(state.path());
    let gateway_pins: Vec<String> = stored
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(
        gateway_pins.len(),
        1,
        "only the gateway's own: {gateway_pins:?}"
    );
    stored.remove(&gateway_pins[0]);
    let mut kept = expected.clone();
    kept.remove("inst-5");
    assert_eq!(stored.len(), kept.len());
    for (key, pin) in &kept {
        assert_eq!(stored.get(key), Some(pin), "pin {key}");
    }

    // The file put back as it was: the next start recognises it as
    // imported, renames it again and imports nothing.
    std::fs::write(state.path().join("pins.json"), &original).unwrap();
    let gw = TestGateway::start_at(state.path(), &["--listen", &listen]);
    assert_eq!(gw.proc.count_log("imported into the device registry"), 0);
    assert!(!state.path().join("pins.json").exists());
    assert_eq!(
        std::fs::read(state.path().join("pins.json.migrated")).unwrap(),
        original
    );
    let (_c, outcome) = connect_node(&gw, &intruder, "intruder", Some("inst-5")).await;
    assert!(
        matches!(outcome, Outcome::Hello(_)),
        "the forgotten pin came back: {outcome:?}"
    );
    let (_, outcome) = connect_node(&gw, &intruder, "intruder", Some("inst-7")).await;
    refused_as_pinned(outcome, "a migrated pin after the second start");
}
