//! Our agent joins a real OpenClaw gateway (issue items 1 and 2).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::openclaw::{free_port, OpenClawGateway, OpenClawHome};
use crate::common::*;

/// Our agent against `url`, with `token` in a file and its own state dir.
fn start_agent(url: &str, token: &str, dir: &std::path::Path, name: &str) -> Proc {
    let tf = dir.join("token");
    write_token_file(&tf, token);
    // The namespace's veth has a TEST-NET-2 address, which is not private:
    // plaintext ws:// to it must be allowed explicitly (harmless on loopback).
    spawn_agent(
        url,
        &tf,
        &dir.join("state"),
        &["--display-name", name, "--allow-insecure-ws"],
    )
}

fn nodes(gw: &OpenClawGateway) -> Vec<Value> {
    gw.call("node.list", None)["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `node.list` until the node named `name` satisfies `pred`.
fn wait_node(
    gw: &OpenClawGateway,
    name: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(n) = nodes(gw)
            .into_iter()
            .find(|n| n["displayName"] == name && pred(n))
        {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "node {name} never {what}: {:#?}\ngateway log:\n{}",
            nodes(gw),
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Approves the pending node-capability request of `node_id`
/// (`openclaw nodes pending` / `openclaw nodes approve`).
fn approve_node(gw: &OpenClawGateway, node_id: &str) {
    let url = gw.url();
    let pending = gw.home.run_json(&[
        "nodes", "pending", "--url", &url, "--token", &gw.token, "--json",
    ]);
    let request = pending
        .as_array()
        .and_then(|p| p.iter().find(|r| r["nodeId"] == node_id))
        .unwrap_or_else(|| panic!("no pending node request for {node_id}: {pending:#}"));
    let id = request["requestId"].as_str().unwrap();
    gw.home
        .run(&["nodes", "approve", id, "--url", &url, "--token", &gw.token]);
}

use crate::common::netns;

#[test]
fn our_agent_joins_a_real_openclaw_gateway() {
    let gw = OpenClawGateway::start();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&gw.url(), &gw.token, dir.path(), "cn-interop");

    // Listed as a connected node with our hints.
    let node = wait_node(
        &gw,
        "cn-interop",
        "connected",
        Duration::from_secs(30),
        |n| n["connected"] == true,
    );
    assert!(
        node["platform"].as_str().unwrap().starts_with("linux "),
        "{node:#}"
    );
    assert_eq!(node["deviceFamily"], "Linux");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    let node_id = node["nodeId"].as_str().unwrap().to_string();
    let (code, out, _) = run_cli(&[
        "identity",
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let identity: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(identity["deviceId"], node_id.as_str());

    // In OpenClaw's presence (OpenClaw keys node rows by device id).
    let presence = gw.call("system-presence", None);
    let row = presence
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["deviceId"] == node_id.as_str())
        .cloned();
    let row = row.unwrap_or_else(|| panic!("not in system-presence: {presence:#}"));
    assert_eq!(row["host"], "cn-interop");
    assert_eq!(row["mode"], "node");

    // Beacons are refused for role node: noticed once, no noise, no reconnect.
    agent.wait_for_log("does not accept presence beacons", Duration::from_secs(10));

    // Host stats: OpenClaw refuses node events until the node's (empty)
    // capability surface is approved; the agent keeps retrying with backoff.
    agent.wait_for_log("host stats not accepted yet", Duration::from_secs(10));
    approve_node(&gw, &node_id);
    let node = wait_node(
        &gw,
        "cn-interop",
        "reported host stats",
        Duration::from_secs(30),
        |n| n.get("hostStats").is_some(),
    );
    assert!(
        node["hostStats"]["cpuCount"].as_u64().unwrap() >= 1,
        "{node:#}"
    );
    assert!(node["hostStats"]["memoryTotalBytes"].as_u64().unwrap() > 0);
    assert_eq!(agent.count_log("does not accept presence beacons"), 1);
    assert_eq!(agent.count_log("host stats not accepted yet"), 1);
    assert_eq!(agent.count_log("reconnecting"), 0, "{}", agent.log_text());
    assert_eq!(agent.count_log("WARN"), 0, "{}", agent.log_text());
    assert_eq!(agent.count_log("ERROR"), 0, "{}", agent.log_text());

    // Kill and restart the OpenClaw gateway: back within the backoff.
    let port = gw.port;
    let home = gw.stop();
    agent.wait_for_log("reconnecting in", Duration::from_secs(10));
    let gw = OpenClawGateway::start_on(home, port, "loopback");
    wait_node(
        &gw,
        "cn-interop",
        "reconnected",
        Duration::from_secs(45),
        |n| n["connected"] == true,
    );

    // Restart the agent: same device id, no new pairing request.
    agent.terminate();
    let _agent = start_agent(&gw.url(), &gw.token, dir.path(), "cn-interop");
    let node = wait_node(
        &gw,
        "cn-interop",
        "back after an agent restart",
        Duration::from_secs(30),
        |n| n["connected"] == true,
    );
    assert_eq!(node["nodeId"], node_id.as_str());
    let url = gw.url();
    let devices: Value = gw.home.run_json(&[
        "devices", "list", "--url", &url, "--token", &gw.token, "--json",
    ]);
    assert_eq!(
        devices["pending"].as_array().map(Vec::len),
        Some(0),
        "{devices:#}"
    );
    let pending: Value = gw.home.run_json(&[
        "nodes", "pending", "--url", &url, "--token", &gw.token, "--json",
    ]);
    assert!(
        !pending
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["nodeId"] == node_id.as_str()),
        "{pending:#}"
    );
}

#[test]
fn a_remote_agent_waits_for_pairing_approval_then_connects() {
    if !netns::available() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    // The OpenClaw gateway runs in a namespace of our own (bind `lan` there:
    // its loopback and its veth address); our agent reaches it over the veth,
    // so OpenClaw sees a remote device that needs pairing approval. The
    // OpenClaw CLI runs inside the namespace, over its loopback.
    let ns = netns::Netns::create(1);
    let gw = OpenClawGateway::start_on(OpenClawHome::inside(&ns), free_port(), "lan");
    let url = format!("ws://{}:{}", ns.ns_addr, gw.port);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&url, &gw.token, dir.path(), "cn-remote");
    let told = agent.wait_for_log("waiting for pairing approval", Duration::from_secs(30));
    assert!(told.contains("openclaw devices approve"), "{told}");

    let state = dir.path().join("state");
    let (_, out, _) = run_cli(&["identity", "--state-dir", state.to_str().unwrap(), "--json"]);
    let device_id = serde_json::from_str::<Value>(&out).unwrap()["deviceId"]
        .as_str()
        .unwrap()
        .to_string();
    let gw_url = gw.url();
    let devices: Value = gw.home.run_json(&[
        "devices", "list", "--url", &gw_url, "--token", &gw.token, "--json",
    ]);
    let request = devices["pending"]
        .as_array()
        .and_then(|p| p.iter().find(|r| r["deviceId"] == device_id.as_str()))
        .unwrap_or_else(|| panic!("no pending pairing for {device_id}: {devices:#}"));
    let request_id = request["requestId"].as_str().unwrap();

    // Still waiting, quietly: retries are slow and the hint is not repeated.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        agent.count_log("waiting for pairing approval"),
        1,
        "{}",
        agent.log_text()
    );
    assert!(
        agent.count_log("reconnecting in") <= 2,
        "{}",
        agent.log_text()
    );

    gw.home.run(&[
        "devices", "approve", request_id, "--url", &gw_url, "--token", &gw.token,
    ]);
    agent.wait_for_log("connected to", Duration::from_secs(45));
    wait_node(
        &gw,
        "cn-remote",
        "connected after approval",
        Duration::from_secs(20),
        |n| n["connected"] == true,
    );

    // The device token OpenClaw issued is kept, private.
    let stored = state.join("device-token.json");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&stored).unwrap()).unwrap();
    assert_eq!(record["deviceId"], device_id.as_str());
    assert_eq!(record["url"], url.as_str());
    assert!(!record["token"].as_str().unwrap().is_empty());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !agent.log_text().contains(record["token"].as_str().unwrap()),
        "device token leaked into logs"
    );
}
