//! Device admission and revocation (issue 16, parts 3, 4 and 7), with the
//! real binary: `admission = "manual"` keeps a new agent pending until
//! `clawnode devices approve`; `clawnode devices revoke` closes a device's
//! connection within 1 s and keeps it out, with the gateway token too,
//! until it is approved again; records survive a restart.

mod common;

use std::time::{Duration, Instant};

use clawnode::protocol::PresenceEntry;
use common::*;
use serde_json::Value;

/// `clawnode devices list --json`, parsed.
fn devices_json(gw: &TestGateway) -> Value {
    let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
    assert_eq!(code, 0, "devices list failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("devices list --json: {e}: {out}"))
}

fn devices_cli(gw: &TestGateway, action: &str, id: &str) -> String {
    let (code, out, err) = gw.operator_cli(&["devices", action], &[id]);
    assert_eq!(code, 0, "devices {action} {id} failed: {err}\n{out}");
    out
}

/// Polls `devices list --json` until `pred` finds something, for `within`.
fn wait_devices<T>(
    gw: &TestGateway,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let list = devices_json(gw);
        if let Some(found) = pred(&list) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "devices list never showed {what} within {within:?}; last: {list:#}\ngateway log:\n{}",
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn entry<'a>(list: &'a Value, key: &str, device_id: &str) -> Option<&'a Value> {
    list[key]
        .as_array()?
        .iter()
        .find(|d| d["deviceId"].as_str() == Some(device_id))
}

/// The device's row, connected (not left).
fn connected(list: &[PresenceEntry], device_id: &str) -> bool {
    list.iter().any(|e| {
        e.device_id.as_deref() == Some(device_id) && e.reason.as_deref() != Some("disconnect")
    })
}

fn admissions(gw: &TestGateway, decision: &str) -> f64 {
    let (_, _, body) = get(gw.addr, "/metrics");
    series(
        &body,
        &format!("clawnode_admission_decisions_total{{decision=\"{decision}\"}}"),
    )
}

/// Revokes `device_id`: its row leaves within 1 s of the answer, and the
/// agent's retries (with the gateway token) are refused until re-approval.
async fn revoke_then_reapprove(gw: &TestGateway, device_id: &str) {
    let before = admissions(gw, "revoked");
    devices_cli(gw, "revoke", device_id);
    let revoked_at = Instant::now();
    gw.wait_presence_within(
        "the revoked device's row left",
        Duration::from_secs(1),
        |l| !connected(l, device_id),
    )
    .await;
    eprintln!(
        "revoked connection closed {:?} after the answer",
        revoked_at.elapsed()
    );
    let list = devices_json(gw);
    assert_eq!(
        entry(&list, "refused", device_id).map(|d| d["state"].clone()),
        Some(Value::from("revoked")),
        "{list:#}"
    );
    let (_, _, metrics) = get(gw.addr, "/metrics");
    assert_eq!(series(&metrics, "clawnode_devices{state=\"revoked\"}"), 1.0);
    // The agent retries (every 2 s, as told) and is refused each time.
    let deadline = Instant::now() + Duration::from_secs(20);
    while admissions(gw, "revoked") < before + 3.0 {
        assert!(
            Instant::now() < deadline,
            "the revoked agent did not retry 2 times within 20 s:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !connected(&gw.presence().await, device_id),
        "a revoked device came back"
    );
    // Re-approval (by device id) lets it back within its retry interval.
    devices_cli(gw, "approve", device_id);
    gw.wait_presence_within(
        "the re-approved device back",
        Duration::from_secs(10),
        |l| connected(l, device_id),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_admission_keeps_a_new_agent_pending_until_approved_and_records_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("test-config.toml");
    std::fs::write(&config, "[gateway]\nadmission = \"manual\"\n").unwrap();
    let gw_dir = tmp.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let conf = config.to_str().unwrap();
    let mut gw = TestGateway::start_at(&gw_dir, &["--config", conf]);
    let agent_dir = tmp.path().join("agent");
    let _agent = gw.agent(&agent_dir, &["--display-name", "web-1"]);

    let (request_id, device_id) =
        wait_devices(&gw, "a pending request", Duration::from_secs(20), |l| {
            let p = l["pending"].as_array()?.first()?;
            Some((
                p["requestId"].as_str()?.to_string(),
                p["deviceId"].as_str()?.to_string(),
            ))
        });
    assert!(
        !connected(&gw.presence().await, &device_id),
        "a pending device has a row"
    );
    let (_, _, metrics) = get(gw.addr, "/metrics");
    assert_eq!(series(&metrics, "clawnode_devices{state=\"pending\"}"), 1.0);
    let (code, table, _) = gw.operator_cli(&["devices", "list"], &[]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&request_id) && table.contains("pending"),
        "{table}"
    );

    devices_cli(&gw, "approve", &request_id);
    let approved_at = Instant::now();
    gw.wait_presence_within("the approved agent's row", Duration::from_secs(10), |l| {
        connected(l, &device_id)
    })
    .await;
    eprintln!(
        "approved agent connected {:?} after approval",
        approved_at.elapsed()
    );
    let list = devices_json(&gw);
    let paired = entry(&list, "paired", &device_id).unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(paired["state"], "approved");
    assert!(paired["approvedAtMs"].as_u64().is_some(), "{paired:#}");
    assert!(
        list["pending"].as_array().is_some_and(|p| p.is_empty()),
        "{list:#}"
    );

    revoke_then_reapprove(&gw, &device_id).await;

    // A restart keeps the record, its state and its pins.
    let before = entry(&devices_json(&gw), "paired", &device_id).cloned();
    gw.proc.terminate();
    let gw = TestGateway::start_at(&gw_dir, &["--config", conf]);
    let after = wait_devices(
        &gw,
        "the device after a restart",
        Duration::from_secs(5),
        |l| entry(l, "paired", &device_id).cloned(),
    );
    let before = before.expect("approved before the restart");
    for key in [
        "state",
        "publicKey",
        "instanceIds",
        "approvedAtMs",
        "firstSeenMs",
    ] {
        assert_eq!(before[key], after[key], "{key} changed over a restart");
    }
}

/// Under the default `admission = "token"` a new agent is approved on
/// first use; revoking it still bites: the gateway token alone does not
/// bring it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_is_closed_within_a_second_and_kept_out_with_the_gateway_token() {
    let gw = TestGateway::start(&[]);
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &[]);
    let device_id = wait_devices(&gw, "the agent approved", Duration::from_secs(20), |l| {
        let d = l["paired"].as_array()?.iter().find(|d| {
            d["roles"]
                .as_array()
                .is_some_and(|r| r.contains(&Value::from("node")))
        })?;
        Some(d["deviceId"].as_str()?.to_string())
    });
    gw.wait_presence("the agent's row", |l| connected(l, &device_id))
        .await;
    revoke_then_reapprove(&gw, &device_id).await;

    // An operator label, kept with the record (escaped in the table).
    let (code, out, err) = gw.operator_cli(&["devices", "rename"], &[&device_id, "rack 4\u{1b}"]);
    assert_ne!(code, 0, "a label with a control character was taken: {out}");
    assert!(err.contains("invalid label"), "{err}");
    gw.operator_cli(&["devices", "rename"], &[&device_id, "rack 4"]);
    let list = devices_json(&gw);
    assert_eq!(
        entry(&list, "paired", &device_id).map(|d| d["label"].clone()),
        Some(Value::from("rack 4")),
        "{list:#}"
    );

    // Removal closes it too; under the token policy it may join again.
    devices_cli(&gw, "remove", &device_id);
    wait_devices(
        &gw,
        "the removed device re-enrolled",
        Duration::from_secs(20),
        |l| entry(l, "paired", &device_id).map(|_| ()),
    );
}

/// `admission_cidrs`: under `manual`, a new device from a listed network is
/// approved on first use (the rest wait, as above); the setting without
/// `manual` is a config error naming what to change.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_from_an_admission_cidr_is_approved_on_first_use() {
    let gw = TestGateway::start_with_config(
        "[gateway]\nadmission = \"manual\"\nadmission_cidrs = [\"127.0.0.0/8\"]\n",
    );
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &[]);
    let device_id = wait_devices(&gw, "the agent approved", Duration::from_secs(20), |l| {
        let d = l["paired"].as_array()?.iter().find(|d| {
            d["roles"]
                .as_array()
                .is_some_and(|r| r.contains(&Value::from("node")))
        })?;
        Some(d["deviceId"].as_str()?.to_string())
    });
    gw.wait_presence("the agent's row", |l| connected(l, &device_id))
        .await;
    assert_eq!(admissions(&gw, "pending"), 0.0);

    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("c.toml");
    std::fs::write(&config, "[gateway]\nadmission_cidrs = [\"10.0.0.0/8\"]\n").unwrap();
    let (code, _, err) = run_cli(&[
        "check-config",
        "--gateway",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("admission_cidrs needs admission = \"manual\""),
        "{err}"
    );
}

/// `clawnode devices reject`: the pending request goes, the device is
/// stored rejected and its retries are refused (not pending again) until
/// an operator approves it.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_request_stays_refused_until_approved() {
    let gw = TestGateway::start_with_config("[gateway]\nadmission = \"manual\"\n");
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &[]);
    let (request_id, device_id) =
        wait_devices(&gw, "a pending request", Duration::from_secs(20), |l| {
            let p = l["pending"].as_array()?.first()?;
            Some((
                p["requestId"].as_str()?.to_string(),
                p["deviceId"].as_str()?.to_string(),
            ))
        });
    let before = admissions(&gw, "rejected");
    devices_cli(&gw, "reject", &request_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admissions(&gw, "rejected") < before + 3.0 {
        assert!(
            Instant::now() < deadline,
            "the rejected agent's retries were not refused:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = devices_json(&gw);
    assert!(
        list["pending"].as_array().is_some_and(|p| p.is_empty()),
        "{list:#}"
    );
    assert_eq!(
        entry(&list, "refused", &device_id).map(|d| d["state"].clone()),
        Some(Value::from("rejected")),
        "{list:#}"
    );
    assert!(!connected(&gw.presence().await, &device_id));
    devices_cli(&gw, "approve", &device_id);
    gw.wait_presence_within("the approved device", Duration::from_secs(10), |l| {
        connected(l, &device_id)
    })
    .await;
}

/// The device's row, connected, with its operator label.
fn label_of(list: &[PresenceEntry], device_id: &str) -> Option<Option<String>> {
    list.iter()
        .find(|e| {
            e.device_id.as_deref() == Some(device_id) && e.reason.as_deref() != Some("disconnect")
        })
        .map(|e| e.operator_label.clone())
}

/// `clawnode devices rename ID LABEL` is shown by the presence views: the
/// row's `operatorLabel` (system-presence, `presence --json`), a LABEL
/// column in `presence` and `presence --watch`, `--filter label=`; kept
/// over a gateway restart (loaded with the registry), gone with `remove`.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_label_shows_in_the_presence_views_and_survives_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(state.path(), &[]);
    let listen = gw.addr.to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &["--display-name", "web-1"]);
    let device_id = wait_devices(&gw, "the agent approved", Duration::from_secs(20), |l| {
        let d = l["paired"]
            .as_array()?
            .iter()
            .find(|d| d["displayName"] == "web-1")?;
        Some(d["deviceId"].as_str()?.to_string())
    });
    gw.wait_presence("the agent's row", |l| label_of(l, &device_id) == Some(None))
        .await;
    // A live view, started before the rename: it must redraw with it.
    let watch = Proc::spawn(
        &[
            "presence",
            "--watch",
            "--url",
            &gw.url(),
            "--token-file",
            gw.operator_token_file().to_str().unwrap(),
        ],
        &[],
    );
    watch.wait_for_log("web-1", Duration::from_secs(20));

    let label = "rack 4 · shelf 2";
    let (code, out, err) = gw.operator_cli(&["devices", "rename"], &[&device_id, label]);
    assert_eq!(code, 0, "rename failed: {err}\n{out}");
    // The row has it at once: rename changes the row and announces it.
    let list = gw.presence().await;
    assert_eq!(
        label_of(&list, &device_id),
        Some(Some(label.to_string())),
        "{list:#?}"
    );
    assert_eq!(
        list.iter().filter(|e| e.operator_label.is_some()).count(),
        1,
        "only the device's row is labelled: {list:#?}"
    );
    let (code, table, err) = gw.presence_cli(&[]);
    assert_eq!(code, 0, "{err}");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("HOST") && header.contains("LABEL"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains("web-1"))
        .unwrap_or_else(|| panic!("no row for web-1: {table}"));
    assert!(row.contains(label), "{table}");
    let (_, json, _) = gw.presence_cli(&["--json", "--filter", "label=rack 4*"]);
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["operatorLabel"], label, "{json}");
    assert_eq!(rows[0]["deviceId"], device_id.as_str(), "{json}");
    watch.wait_for_log(label, Duration::from_secs(10));
    drop(watch);

    // A restart: the label comes back with the registry, on the row the
    // agent makes when it reconnects.
    gw.proc.terminate();
    let gw = TestGateway::start_at(state.path(), &["--listen", &listen]);
    gw.wait_presence("the agent back, labelled", |l| {
        label_of(l, &device_id) == Some(Some(label.to_string()))
    })
    .await;

    // Removed: the record and its label go; under the token policy the
    // agent joins again as new, unlabelled.
    devices_cli(&gw, "remove", &device_id);
    let list = gw
        .wait_presence("the agent back, unlabelled", |l| {
            label_of(l, &device_id) == Some(None)
        })
        .await;
    assert!(list.iter().all(|e| e.operator_label.is_none()), "{list:#?}");
}

/// What the Instances page reads for its pending list, without a browser:
/// connected as the page connects (operator token, `operator.read` and
/// `operator.pairing`), `clawnode.device.pending` lists a pending agent with
/// everything the page shows; a connection without `operator.pairing` is
/// refused it; the page polls it and shows the approve command.
#[tokio::test(flavor = "multi_thread")]
async fn the_pending_list_the_instances_page_polls_has_every_waiting_agent() {
    let gw = TestGateway::start_with_config("[gateway]\nadmission = \"manual\"\n");
    let mut page = open_operator(
        &gw,
        "ui",
        Some("5b0c6d2e-6f7a-4e3b-9a51-0c2d3e4f5a6b"),
        &["operator.read", "operator.pairing"],
    )
    .await;
    let empty = page.call("clawnode.device.pending", Value::Null).await;
    let empty = empty.expect("the page's scopes may read it");
    assert_eq!(empty["pending"], Value::Array(vec![]), "{empty}");
    assert_eq!(empty["max"], 1000, "{empty}");

    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &["--display-name", "web-<i>7</i>"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (answer, p) = loop {
        let answer = page
            .call("clawnode.device.pending", Value::Null)
            .await
            .expect("pending");
        if let Some(p) = answer["pending"]
            .as_array()
            .and_then(|p| p.first())
            .cloned()
        {
            break (answer, p);
        }
        assert!(
            Instant::now() < deadline,
            "no pending agent within 20 s:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The same request as `devices list` shows.
    let list = devices_json(&gw);
    assert_eq!(list["pending"][0]["requestId"], p["requestId"], "{list:#}");
    assert_eq!(p["displayName"], "web-<i>7</i>", "{p}");
    assert_eq!(p["remoteIp"], "127.0.0.1", "{p}");
    assert_eq!(p["deviceId"].as_str().map(str::len), Some(64), "{p}");
    let age = answer["ts"].as_u64().unwrap() - p["ts"].as_u64().unwrap();
    assert!(age < 30_000, "{answer}");

    let mut reader = open_operator(&gw, "ui", None, &["operator.read"]).await;
    let refused = reader
        .call("clawnode.device.pending", Value::Null)
        .await
        .unwrap_err();
    assert_eq!(refused.code.as_str(), "FORBIDDEN", "{refused:?}");
    assert!(refused.message.contains("operator.pairing"), "{refused:?}");

    // The page asks for the scope, polls the method and shows the command.
    let (status, _, html) = get(gw.addr, "/");
    assert_eq!(status, 200);
    for needle in [
        "\"operator.read\", \"operator.pairing\"",
        "call(\"clawnode.device.pending\"",
        "`clawnode devices approve ${p.requestId}`",
    ] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }

    // Approved: gone from the list.
    devices_cli(&gw, "approve", p["requestId"].as_str().unwrap());
    let after = page
        .call("clawnode.device.pending", Value::Null)
        .await
        .expect("pending");
    assert_eq!(after["pending"], Value::Array(vec![]), "{after}");
}
