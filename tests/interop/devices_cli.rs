//! `openclaw devices …` (the real OpenClaw CLI) against our gateway under
//! `admission = "manual"` (issue 16, part 7): it lists our agent's pending
//! request, its approval lets the agent in, and its removal closes the
//! agent's connection (pending again).

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
