//! `openclaw devices …` (the real OpenClaw CLI) against our gateway under
//! `admission = "manual"` (issue 16, part 7): it lists our agent's pending
//! request, its approval lets the agent in, its rename labels the agent's
//! presence row (read back by `openclaw gateway call system-presence`), and
//! its removal closes the agent's connection (pending again).

use std::time::{Duration, Instant};

use crate::common::openclaw::OpenClawHome;
use crate::common::*;

#[test]
fn openclaw_devices_lists_approves_and_removes_an_agent_on_our_gateway() {
    let gw = TestGateway::start_with_config("[gateway]\nadmission = \"manual\"\n");
    let (url, token) = (gw.url(), gw.operator_token());
    let token = token.expose().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &["--display-name", "cn-pending"]);
    let home = OpenClawHome::new();
    let list_args = [
        "devices", "list", "--json", "--url", &url, "--token", &token,
    ];

    let deadline = Instant::now() + Duration::from_secs(60);
    let pending = loop {
        let list = home.run_json(&list_args);
        let found = list["pending"].as_array().and_then(|p| p.first()).cloned();
        if let Some(p) = found {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "openclaw devices list never showed our pending agent: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(pending["displayName"], "cn-pending", "{pending:#}");
    let request_id = pending["requestId"]
        .as_str()
        .expect("requestId")
        .to_string();
    let device_id = pending["deviceId"].as_str().expect("deviceId").to_string();

    home.run(&[
        "devices",
        "approve",
        &request_id,
        "--url",
        &url,
        "--token",
        &token,
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(gw.wait_presence_within(
        "the agent approved by openclaw devices approve",
        Duration::from_secs(10),
        |l| {
            l.iter().any(|e| {
                e.device_id.as_deref() == Some(device_id.as_str())
                    && e.reason.as_deref() != Some("disconnect")
            })
        },
    ));
    let list = home.run_json(&list_args);
    let paired = list["paired"].as_array().cloned().unwrap_or_default();
    assert!(
        paired.iter().any(|d| d["deviceId"] == device_id.as_str()),
        "{list:#}"
    );

    // `openclaw devices rename` sets the operator label our presence rows
    // carry as `operatorLabel`; OpenClaw's own client reads such a row.
    home.run(&[
        "devices", "rename", "--device", &device_id, "--name", "rack 4", "--url", &url, "--token",
        &token,
    ]);
    let presence = home.call(&url, &token, "system-presence", None);
    let row = presence
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["deviceId"] == device_id.as_str()))
        .unwrap_or_else(|| panic!("no row for {device_id}: {presence:#}"));
    assert_eq!(row["operatorLabel"], "rack 4", "{row:#}");

    // `openclaw devices remove` closes its connection; under manual
    // admission it is pending again.
    home.run(&[
        "devices", "remove", &device_id, "--url", &url, "--token", &token,
    ]);
    rt.block_on(gw.wait_presence_within(
        "the removed agent's row left",
        Duration::from_secs(1),
        |l| {
            !l.iter().any(|e| {
                e.device_id.as_deref() == Some(device_id.as_str())
                    && e.reason.as_deref() != Some("disconnect")
            })
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = home.run_json(&list_args);
        let again = list["pending"]
            .as_array()
            .is_some_and(|p| p.iter().any(|r| r["deviceId"] == device_id.as_str()));
        if again {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed agent is not pending again: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `openclaw devices rotate|revoke --device ID --role node` (the real
/// OpenClaw CLI) against our gateway (issue 16, part 5): rotation answers
/// with OpenClaw's metadata and no token (withheld: another device's), the
/// agent's connection closes and it is issued a new token over its join
/// token; revocation ends that token at once.
#[test]
fn openclaw_devices_rotate_and_revoke_our_agents_token() {
    let gw = TestGateway::start(&[]);
    let (url, token) = (gw.url(), gw.operator_token());
    let token = token.expose().to_string();
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = gw.agent(agent_dir.path(), &["--display-name", "cn-tokens"]);
    let stored = || -> Option<String> {
        let text = std::fs::read_to_string(agent_dir.path().join("device-token.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["token"].as_str().map(str::to_string)
    };
    let wait_token = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(t) = stored().filter(|t| pred(t)) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} stored within 20 s:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = wait_token("device token", &|_| true);
    let (identity, _) =
        clawnode::identity::DeviceIdentity::load_or_create(agent_dir.path()).unwrap();
    let device_id = identity.device_id().to_string();
    let home = OpenClawHome::new();

    let rotated = home.run_json(&[
        "devices", "rotate", "--device", &device_id, "--role", "node", "--json", "--url", &url,
        "--token", &token,
    ]);
    assert_eq!(rotated["deviceId"], device_id.as_str(), "{rotated:#}");
    assert_eq!(rotated["role"], "node", "{rotated:#}");
    assert!(rotated["rotatedAtMs"].as_u64().is_some(), "{rotated:#}");
    assert!(rotated.get("token").is_none(), "{rotated:#}");
    let second = wait_token("new device token", &|t| t != first);

    let revoked = home.run_json(&[
        "devices", "revoke", "--device", &device_id, "--role", "node", "--json", "--url", &url,
        "--token", &token,
    ]);
    assert_eq!(revoked["deviceId"], device_id.as_str(), "{revoked:#}");
    assert!(revoked["revokedAtMs"].as_u64().is_some(), "{revoked:#}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(async {
        let mut c = RawClient::open(&url).await;
        let credentials = clawnode::agent::session::Credentials {
            shared: None,
            device_token: Some(clawnode::config::Secret::new(second.as_str())),
        };
        let client = crate::common::node::node_client("raw", Some(identity.instance_id()));
        let p = clawnode::agent::session::signed_node_connect(
            &identity,
            client,
            &credentials,
            &c.challenge,
        );
        c.connect(&p).await
    });
    let Outcome::Error(e, _) = refused else {
        panic!("a revoked token let in: {refused:?}")
    };
    assert_eq!(
        e.detail_code_str(),
        Some("AUTH_DEVICE_TOKEN_MISMATCH"),
        "{e}"
    );
}

/// OpenClaw's own node host keeps the token our gateway issues it and,
/// started again without `OPENCLAW_GATEWAY_TOKEN`, connects with it.
#[test]
fn openclaw_node_host_reconnects_with_the_device_token_our_gateway_issued() {
    let gw = TestGateway::start(&[]);
    let home = OpenClawHome::new();
    let port = gw.addr.port().to_string();
    let args = [
        "node",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--display-name",
        "oc-token-node",
    ];
    let mut cmd = home.command(&args);
    cmd.env("OPENCLAW_GATEWAY_TOKEN", gw.token().expose());
    let mut node = Proc::spawn_command(cmd);
    node.wait_for_log("node host gateway connected", Duration::from_secs(90));
    let first = gw
        .proc
        .wait_for_log("connected role=\"node\"", Duration::from_secs(10));
    assert!(first.contains("credential=\"join-token\""), "{first}");
    node.terminate();

    let mut cmd = home.command(&args);
    cmd.env_remove("OPENCLAW_GATEWAY_TOKEN");
    let mut node = Proc::spawn_command(cmd);
    node.wait_for_log("node host gateway connected", Duration::from_secs(90));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.proc.count_log("credential=\"device-token\"") < 1 {
        assert!(
            Instant::now() < deadline,
            "the node host did not reconnect with its device token:\n{}\n{}",
            node.log_text(),
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.terminate();
}
