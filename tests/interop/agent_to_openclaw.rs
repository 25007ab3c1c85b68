//! Our agent joins a real OpenClaw gateway.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::openclaw::OpenClawGateway;
use crate::common::*;

/// Our agent against `gw`, with its token in a file.
fn start_agent(gw: &OpenClawGateway, dir: &std::path::Path, name: &str) -> Proc {
    let tf = dir.join("token");
    std::fs::write(&tf, &gw.token).unwrap();
    spawn_agent(
        &gw.url(),
        &tf,
        &dir.join("state"),
        &["--display-name", name],
    )
}

/// Polls `node.list` until a node named `name` satisfies `pred`.
fn wait_node(gw: &OpenClawGateway, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = gw.call("node.list", None);
        let found = list["nodes"].as_array().and_then(|n| {
            n.iter()
                .find(|n| n["displayName"] == name && pred(n))
                .cloned()
        });
        if let Some(n) = found {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "node {name} never {what}: {list:#}\ngateway log:\n{}",
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn our_agent_joins_a_real_openclaw_gateway() {
    let gw = OpenClawGateway::start();
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&gw, dir.path(), "cn-interop");
    let node = wait_node(&gw, "cn-interop", "connected", |n| n["connected"] == true);
    assert!(
        node["platform"].as_str().unwrap().starts_with("linux "),
        "{node:#}"
    );
    assert_eq!(node["deviceFamily"], "Linux");
    eprintln!("{}", agent.log_text());
}
