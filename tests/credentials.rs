//! Roles by credential (issue 16, part 1), with the real binary: the join
//! token every host holds (`gateway.token`) lets a node in and nothing
//! more; operators need the gateway's `operator.token`, which `clawnode
//! presence` and `forget` on the gateway host find with no flags.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use clawnode::identity::DeviceIdentity;
use clawnode::protocol::method;
use common::node::connect_node;
use common::*;
use serde_json::json;

/// The refusal of the join token asking for role operator: its code, and
/// a message that names the operator token's file.
fn refused_as_node_only(outcome: Outcome, gw: &TestGateway, what: &str) {
    let Outcome::Error(e, _) = outcome else {
        panic!("{what}: the join token was let in as an operator: {outcome:?}")
    };
    assert_eq!(e.code.as_str(), "INVALID_REQUEST", "{what}: {e:?}");
    assert_eq!(
        e.detail_code_str(),
        Some("AUTH_SCOPE_MISMATCH"),
        "{what}: {e:?}"
    );
    let file = gw.operator_token_file();
    assert!(
        e.message.contains("join token and grants role node only")
            && e.message.contains(file.to_str().unwrap()),
        "{what}: {}",
        e.message
    );
}

/// A host holding only the join token cannot connect as an operator (read,
/// write or admin), so it cannot write into another row, nor forget a pin;
/// as the node it is, it may only update its own row and may not forget,
/// approve, revoke or remove a device, or make a join token.
/// The operator token may do all of it.
#[tokio::test(flavor = "multi_thread")]
async fn the_join_token_is_a_node_credential_and_the_operator_token_an_operator_one() {
    let gw = TestGateway::start(&[]);
    // The join token asking for role operator, with any scope: refused.
    for scopes in [
        &["operator.read"][..],
        &["operator.write"],
        &["operator.admin"],
        &[],
    ] {
        let mut c = RawClient::open(&gw.url()).await;
        let params = operator_params("cli", Some("intruder"), scopes, Some(&gw.token()));
        refused_as_node_only(c.connect(&params).await, &gw, &format!("{scopes:?}"));
    }
    // Generated on first start, private like gateway.token, and distinct.
    for file in [gw.token_file(), gw.operator_token_file()] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    assert_ne!(gw.token().expose(), gw.operator_token().expose());

    // An agent with the join token joins (role node, as always).
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &["--display-name", "cred-node"]);
    gw.wait_presence("the agent's row", |l| {
        l.iter().any(|e| e.host.as_deref() == Some("cred-node"))
    })
    .await;

    // The CLI with the join token says the same, in one line.
    let tf = gw.token_file();
    let (code, out, err) = run_cli(&[
        "presence",
        "--url",
        &gw.url(),
        "--token-file",
        tf.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("AUTH_SCOPE_MISMATCH") || err.contains("grants role node only"),
        "{err}"
    );
    assert!(err.contains("operator.token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // As a node, the join token may update its own row only, and may not
    // forget anything.
    let id = DeviceIdentity::ephemeral("cred-raw-node");
    let (mut node, outcome) = connect_node(&gw, &id, "cred-raw", Some("cred-raw-node")).await;
    assert!(matches!(outcome, Outcome::Hello(_)), "{outcome:?}");
    let other = agent_id(agent_dir.path());
    let e = node
        .call(
            "system-event",
            json!({ "text": "x", "instanceId": other, "host": "hijacked", "mode": "node" }),
        )
        .await
        .expect_err("a node wrote into another row");
    assert_eq!(e.code.as_str(), "FORBIDDEN", "{e:?}");
    let e = node
        .call(method::INSTANCE_FORGET, json!({ "instanceId": other }))
        .await
        .expect_err("a node forgot a pin");
    assert_eq!(e.code.as_str(), "FORBIDDEN", "{e:?}");
    // Nor approve, revoke or remove a device, rotate a token, or make a
    // join token (operator.pairing, which no node has).
    let calls = [
        ("device.pair.approve", json!({ "requestId": "any" })),
        ("device.pair.remove", json!({ "deviceId": "any" })),
        ("clawnode.device.revoke", json!({ "deviceId": "any" })),
        (
            "device.token.rotate",
            json!({ "deviceId": "any", "role": "node" }),
        ),
        ("clawnode.joinToken.create", json!({})),
        ("device.pair.list", json!({})),
    ];
    for (method, params) in calls {
        let e = node
            .call(method, params)
            .await
            .expect_err("a node called a pairing method");
        assert_eq!(e.code.as_str(), "FORBIDDEN", "{method}: {e:?}");
    }

    // The operator token: an admin that may write any row and forget.
    let mut admin = open_operator(&gw, "cli", None, &["operator.admin"]).await;
    admin
        .call(
            "system-event",
            json!({ "text": "x", "instanceId": "cred-beacon", "host": "beacon", "mode": "node" }),
        )
        .await
        .expect("the operator writes a row");
    let (code, out, err) = gw.presence_cli(&["--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cred-node") && out.contains("beacon"), "{out}");
    // Nothing the join token's holder sent reached the list.
    assert!(
        !out.contains("hijacked") && !out.contains("intruder"),
        "{out}"
    );
}

/// On the gateway host (its config file), `clawnode presence` and `forget`
/// need no token flag: they read the gateway's operator.token, not the join
/// token named by the config's `token_file`.
#[tokio::test(flavor = "multi_thread")]
async fn presence_and_forget_on_the_gateway_host_use_the_operator_token_with_no_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let join = tmp.path().join("join.token");
    write_token_file(&join, "join-token-of-the-whole-fleet");
    let gw = TestGateway::start_at(&state, &["--token-file", join.to_str().unwrap()]);
    let cfg = tmp.path().join("clawnode.toml");
    std::fs::write(
        &cfg,
        format!(
            "token_file = \"{}\"\nstate_dir = \"{}\"\n[gateway]\nenabled = true\nlisten = \"{}\"\n",
            join.display(),
            state.display(),
            gw.addr
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = spawn_agent(
        &gw.url(),
        &join,
        agent_dir.path(),
        &["--display-name", "cred-local"],
    );
    gw.wait_presence("the agent's row", |l| {
        l.iter().any(|e| e.host.as_deref() == Some("cred-local"))
    })
    .await;
    let (code, out, err) = run_cli(&["presence", "--config", cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cred-local"), "{out}");

    let id = agent_id(agent_dir.path());
    agent.terminate();
    let (code, out, err) = run_cli(&["forget", &id, "--config", cfg]);
    assert_eq!(code, 0, "{out}{err}");
    // Asked of the running gateway (not an offline edit), and done.
    assert!(out.contains(&format!("forgot instance {id}")), "{out}{err}");
    assert!(!err.contains("not running"), "{err}");
}

fn agent_id(state: &std::path::Path) -> String {
    std::fs::read_to_string(state.join("instance-id"))
        .unwrap()
        .trim()
        .to_string()
}
