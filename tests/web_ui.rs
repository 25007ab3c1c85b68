//! The Instances page in a real browser: Debian's chromium, headless, driven
//! by playwright-core (tests/web/instances.mjs). The gateway runs in a
//! network namespace (rule 8: clients arrive from a real address), two
//! agents and the browser reach it over a veth link.
//!
//! Needs root (namespaces), `chromium` and `npm ci --prefix tests/web`:
//! ignored by a plain `cargo test`; `.ci/run` provides all three and runs
//! it with `-- --ignored`, where a missing piece fails. The pending-devices
//! test (tests/web/pending.mjs) needs no root: its gateway is on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::browser::{self, BrowserScript};
use common::netns::{self, Netns};
use common::*;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (network namespaces), chromium and playwright-core (npm ci --prefix tests/web): see README"]
async fn the_instances_page_shows_the_fleet_live_in_chromium() {
    netns::require_root("network namespaces");
    browser::require_chromium();
    let ns = Netns::create(6);
    let state = tempfile::tempdir().unwrap();
    let (gateway, addr) = netns::gateway_in(&ns, state.path(), &[]);
    let url = format!("ws://{addr}");
    let token_file = state.path().join("gateway.token");
    // The page is an operator: it uses the operator token.
    let token = clawnode::config::read_token_file(&state.path().join("operator.token")).unwrap();

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut agents: Vec<Proc> = ["web-1", "web-2"]
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| {
            // TEST-NET-2 is not a private range: plaintext needs the flag.
            let flags = ["--display-name", name, "--allow-insecure-ws"];
            spawn_agent(&url, &token_file, dir.path(), &flags)
        })
        .collect();
    // Their instance ids, as each logs it when it creates its identity.
    let ids: Vec<String> = agents
        .iter()
        .map(|a| {
            let l = a.wait_for_log("created a new identity", Duration::from_secs(20));
            l.split("instance_id=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_string()
        })
        .collect();

    let screenshot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("instances.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut node = BrowserScript::start(
        "instances.mjs",
        &[
            ("GATEWAY", &format!("http://{addr}")),
            ("TOKEN", token.expose()),
            ("AGENTS", &ids.join(",")),
            ("SCREENSHOT", screenshot.to_str().unwrap()),
        ],
    );
    let log = || format!("gateway log:\n{}", gateway.log_text());

    let ready = node.line(Duration::from_secs(90), &log);
    assert_eq!(ready["step"], "ready", "{ready}");
    let rows = ready["rows"].as_array().unwrap();
    for id in &ids {
        let row = rows
            .iter()
            .find(|r| r["instance"] == id.as_str())
            .unwrap_or_else(|| panic!("no row for {id}: {ready}"));
        let cells: Vec<&str> = row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cells[0], "Active", "{cells:?}");
        assert!(
            cells[1].starts_with("web-"),
            "host is the display name: {cells:?}"
        );
        let ip: std::net::IpAddr = cells[2].parse().unwrap_or_else(|_| panic!("{cells:?}"));
        assert!(
            !ip.is_loopback(),
            "an address the agent reported: {cells:?}"
        );
        assert_eq!(cells[3], "node", "{cells:?}");
        assert_eq!(cells[9], &id[..8], "short instance id: {cells:?}");
    }
    assert!(
        ready["counts"].as_str().unwrap().contains("Active 3"),
        "the gateway and two agents; the page does not count itself: {ready}"
    );
    let page_row = rows
        .iter()
        .find(|r| r["mode"] == "ui")
        .unwrap_or_else(|| panic!("the page's own row is listed: {ready}"));
    assert!(
        page_row["cells"][1].as_str().unwrap().contains("this page"),
        "{page_row}"
    );

    // Stop web-2: its row must change in the open page.
    let stopped = agents.pop().unwrap();
    drop(stopped);
    node.send(&format!("stopped {}", ids[1]));
    let done = node.line(Duration::from_secs(60), &log);
    assert_eq!(done["step"], "done", "{done}");
    let row = done["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == ids[1].as_str())
        .unwrap()
        .clone();
    assert_eq!(row["left"], true, "{row}");
    assert_eq!(
        row["status"], "Left",
        "a departed agent is never Active: {row}"
    );
    assert_eq!(row["cells"][0], "Left", "{row}");
    let counts = done["counts"].as_str().unwrap();
    assert!(
        counts.contains("Active 2") && counts.contains("Left 1"),
        "the departed agent is counted as Left: {counts}"
    );
    assert!(done["detail"].as_str().unwrap().contains("CPUs"), "{done}");
    assert!(done["detail"].as_str().unwrap().contains("web-1"), "{done}");
    assert!(
        node.finish(Duration::from_secs(30)),
        "{}\n{}",
        node.stderr(),
        log()
    );

    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
    drop(agents);
    drop(gateway);
}

/// Under `admission = "manual"` the page (an operator with the operator
/// token) lists a pending agent — host name, device id, address, age,
/// request id — with the command that approves it, values as text; once
/// approved and labelled, the request leaves the list and the agent's row
/// shows its label.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium and playwright-core (npm ci --prefix tests/web): see README"]
async fn the_instances_page_lists_a_pending_device_with_its_approve_command_in_chromium() {
    browser::require_chromium();
    let gw = TestGateway::start_with_config("[gateway]\nadmission = \"manual\"\n");
    let agent_dir = tempfile::tempdir().unwrap();
    // A host name with markup: the page must show it, not make it.
    let host = "web-<i>9</i>";
    let _agent = gw.agent(agent_dir.path(), &["--display-name", host]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (request_id, device_id) = loop {
        let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
        assert_eq!(code, 0, "{err}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(p) = list["pending"].as_array().and_then(|p| p.first()) {
            break (
                p["requestId"].as_str().unwrap().to_string(),
                p["deviceId"].as_str().unwrap().to_string(),
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending request within 20 s:\n{}",
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let token = gw.operator_token();
    let mut node = BrowserScript::start(
        "pending.mjs",
        &[
            ("GATEWAY", &format!("http://{}", gw.addr)),
            ("TOKEN", token.expose()),
            ("REQUEST", &request_id),
        ],
    );
    let log = || format!("gateway log:\n{}", gw.proc.log_text());
    let listed = node.line(Duration::from_secs(60), &log);
    assert_eq!(listed["step"], "pending", "{listed}");
    let cells: Vec<&str> = listed["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[0], host, "the host name, as text: {listed}");
    assert_eq!(listed["elements"], 0, "markup made elements: {listed}");
    assert_eq!(listed["device"], device_id.as_str(), "{listed}");
    assert_eq!(listed["deviceTitle"], device_id.as_str(), "{listed}");
    assert!(
        device_id.starts_with(cells[1].trim_end_matches('…')),
        "{listed}"
    );
    assert_eq!(cells[2], "127.0.0.1", "{listed}");
    assert!(cells[3].ends_with("s ago"), "its age: {listed}");
    assert_eq!(cells[4], request_id, "{listed}");
    assert_eq!(
        cells[5],
        format!("clawnode devices approve {request_id}"),
        "{listed}"
    );
    assert_eq!(listed["section"]["visible"], true, "{listed}");
    assert_eq!(listed["section"]["count"], "1", "{listed}");

    // The command the page shows is the one that works.
    let approve: Vec<&str> = cells[5].split(' ').skip(1).collect();
    let (code, _, err) = gw.operator_cli(&approve, &[]);
    assert_eq!(code, 0, "{err}");
    let label = "<b>rack</b> 4";
    let (code, _, err) = gw.operator_cli(&["devices", "rename"], &[&device_id, label]);
    assert_eq!(code, 0, "{err}");
    node.send("approved");
    let approved = node.line(Duration::from_secs(60), &log);
    assert_eq!(approved["step"], "approved", "{approved}");
    let row = &approved["row"];
    assert_eq!(row["label"], label, "{approved}");
    assert_eq!(row["elements"], 0, "{approved}");
    assert_eq!(row["status"], "Active", "{approved}");
    assert!(
        node.finish(Duration::from_secs(30)),
        "{}\n{}",
        node.stderr(),
        log()
    );
}
