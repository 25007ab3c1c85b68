//! The real `openclaw node run` with a created join token (issue 16, part
//! 6) in `OPENCLAW_GATEWAY_TOKEN`: it enrols on our gateway as the join
//! token file's holder would, and `clawnode devices list` names the token.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::openclaw::OpenClawHome;
use crate::common::*;

#[test]
fn openclaw_node_run_enrols_with_a_created_join_token() {
    let gw = TestGateway::start(&[]);
    let (code, out, err) = gw.operator_cli(&["join-token", "create"], &["--json"]);
    assert_eq!(code, 0, "join-token create failed: {err}");
    let created: Value = serde_json::from_str(&out).expect("--json");
    let token = created["token"].as_str().expect("token").to_string();
    let id = created["joinToken"]["id"].as_str().expect("id").to_string();

    let home = OpenClawHome::new();
    let port = gw.addr.port().to_string();
    let mut cmd = home.command(&[
        "node",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--display-name",
        "oc-joined",
    ]);
    cmd.env("OPENCLAW_GATEWAY_TOKEN", &token);
    let node = Proc::spawn_command(cmd);
    node.wait_for_log("node host gateway connected", Duration::from_secs(90));

    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
        assert_eq!(code, 0, "{err}");
        let list: Value = serde_json::from_str(&out).expect("--json");
        let found = list["paired"]
            .as_array()
            .and_then(|p| p.iter().find(|d| d["displayName"] == "oc-joined").cloned());
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the OpenClaw node host is not among the approved devices: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(record["joinTokenId"], id.as_str(), "{record:#}");
    assert_eq!(record["roles"], serde_json::json!(["node"]), "{record:#}");
    assert!(!gw.proc.log_text().contains(&token), "the token was logged");
}
