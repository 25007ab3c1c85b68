//! Device tokens (issue 16, part 5, and part 1's approved operator device),
//! with the real binary: an agent is issued a token in `hello-ok` and keeps
//! it; it connects with that token alone once its join token is gone or
//! wrong; the token works only with its own device's key and for its own
//! role; `clawnode devices rotate` and `device.token.revoke` end it at once
//! (the agent is told clearly, and does not spin), and a device revoked by
//! an operator stays out with its token too.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clawnode::agent::session::{signed_node_connect, Credentials};
use clawnode::config::Secret;
use clawnode::identity::DeviceIdentity;
use clawnode::protocol::device_auth::DeviceAuthPayload;
use clawnode::protocol::{ConnectAuth, ConnectParams, DeviceProof, PresenceEntry, Role};
use common::node::node_client;
use common::*;
use serde_json::{json, Value};

/// What the agent keeps in `<state-dir>/device-token.json`.
fn stored_token(agent_dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(agent_dir.join("device-token.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Waits until the agent stores a token that `pred` accepts; returns it.
fn wait_stored_token(
    agent: &Proc,
    agent_dir: &Path,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(token) = stored_token(agent_dir)
            .and_then(|v| v["token"].as_str().map(str::to_string))
            .filter(|t| pred(t))
        {
            return token;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never stored {what} within 20 s; agent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The device's row, connected (not left).
fn connected(list: &[PresenceEntry], device_id: &str) -> bool {
    list.iter().any(|e| {
        e.device_id.as_deref() == Some(device_id) && e.reason.as_deref() != Some("disconnect")
    })
}

/// A copy of the gateway's join token the agent may lose (the test never
/// touches the gateway's own file).
fn join_token_copy(gw: &TestGateway, dir: &Path) -> PathBuf {
    let path = dir.join("join.token");
    write_token_file(&path, gw.token().expose());
    path
}

/// A raw node connect of `identity` with `auth` as given.
async fn node_connect(
    gw: &TestGateway,
    identity: &DeviceIdentity,
    shared: Option<&str>,
    device_token: Option<&str>,
) -> (RawClient, Outcome) {
    let mut c = RawClient::open(&gw.url()).await;
    let credentials = Credentials {
        shared: shared.map(Secret::new),
        device_token: device_token.map(Secret::new),
    };
    let client = node_client("raw-node", Some(identity.instance_id()));
    let params = signed_node_connect(identity, client, &credentials, &c.challenge);
    let outcome = c.connect(&params).await;
    (c, outcome)
}

/// An operator's connect signed by `identity`, asking for `scopes`.
fn signed_operator(
    challenge: &clawnode::protocol::ConnectChallenge,
    identity: &DeviceIdentity,
    scopes: &[&str],
    token: Option<&str>,
    device_token: Option<&str>,
) -> ConnectParams {
    let mut p = operator_params("ui", None, scopes, None);
    p.auth = Some(ConnectAuth {
        token: token.map(str::to_string),
        device_token: device_token.map(str::to_string),
    });
    let signature = identity.sign(&DeviceAuthPayload {
        device_id: identity.device_id(),
        client_id: &p.client.id,
        client_mode: &p.client.mode,
        role: Role::Operator.as_str(),
        scopes: &p.scopes,
        signed_at_ms: challenge.ts,
        token: p.signature_token(),
        nonce: &challenge.nonce,
        platform: Some(&p.client.platform),
        device_family: p.client.device_family.as_deref(),
    });
    p.device = Some(DeviceProof {
        id: identity.device_id().to_string(),
        public_key: identity.public_key().to_string(),
        signature,
        signed_at: challenge.ts,
        nonce: challenge.nonce.clone(),
    });
    p
}

fn detail(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Hello(_) => "hello-ok".into(),
        Outcome::Error(e, _) => e.detail_code_str().unwrap_or(e.code.as_str()).to_string(),
        Outcome::Closed(f) => format!("closed {f:?}"),
    }
}

fn devices_json(gw: &TestGateway) -> Value {
    let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
    assert_eq!(code, 0, "devices list failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("devices list --json: {e}: {out}"))
}

/// The agent is issued a token on its first (approved) connect, stores it,
/// and from then on connects with it alone: with its join token file
/// holding garbage, and with the file gone. Fails before part 5: the
/// gateway issued no token (and a connect with only a device token could
/// not even verify: the signature was checked against `auth.token`).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_keeps_connecting_with_its_device_token_after_the_join_token_is_gone() {
    let gw = TestGateway::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let agent_dir = tmp.path().join("agent");
    let join = join_token_copy(&gw, tmp.path());
    let mut agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    let token = wait_stored_token(&agent, &agent_dir, "a device token", |_| true);
    let record = stored_token(&agent_dir).unwrap();
    let (identity, _) = DeviceIdentity::load_or_create(&agent_dir).unwrap();
    let device_id = identity.device_id().to_string();
    assert_eq!(record["url"], gw.url());
    assert_eq!(record["deviceId"], device_id);
    assert_eq!(record["role"], "node");
    assert_eq!(token.len(), 43, "32 random bytes, base64url");
    // Listed with its role, never the token.
    let list = devices_json(&gw);
    let paired = list["paired"]
        .as_array()
        .and_then(|p| p.iter().find(|d| d["deviceId"] == device_id.as_str()))
        .unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(paired["tokens"][0]["role"], "node", "{paired:#}");
    assert_eq!(paired["tokens"][0]["active"], true, "{paired:#}");
    assert!(!list.to_string().contains(&token));
    // Stored as its SHA-256 only: the registry file never holds it.
    let registry = std::fs::read(gw.state_dir.join("registry.sqlite")).unwrap();
    assert!(!String::from_utf8_lossy(&registry).contains(&token));
    // Nor any log line.
    assert!(!gw.proc.log_text().contains(&token) && !agent.log_text().contains(&token));
    agent.terminate();

    // A wrong join token: let in by the device token, which is kept.
    write_token_file(&join, "not-the-join-token");
    let mut agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    agent.wait_for_log("connected to", Duration::from_secs(20));
    gw.wait_presence("the agent back with a wrong join token", |l| {
        connected(l, &device_id)
    })
    .await;
    agent.terminate();
    assert_eq!(
        stored_token(&agent_dir).unwrap()["token"],
        token.as_str(),
        "a valid device token is kept, not replaced"
    );

    // No join token at all: the agent starts and connects with its token.
    std::fs::remove_file(&join).unwrap();
    let mut agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    agent.wait_for_log(
        "no join token; connecting with the device token",
        Duration::from_secs(20),
    );
    agent.wait_for_log("connected to", Duration::from_secs(20));
    gw.wait_presence("the agent back without a join token", |l| {
        connected(l, &device_id)
    })
    .await;
    let line = gw
        .proc
        .wait_for_log("credential=\"device-token\"", Duration::from_secs(5));
    assert!(line.contains("role=\"node\""), "{line}");
    agent.terminate();

    // check-config agrees with run.
    let check = |dir: &Path| {
        run_cli(&[
            "check-config",
            "--url",
            &gw.url(),
            "--token-file",
            join.to_str().unwrap(),
            "--state-dir",
            dir.to_str().unwrap(),
        ])
    };
    let (code, out, err) = check(&agent_dir);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("connects with the device token stored for"),
        "{out}"
    );

    // Without a stored token, the missing file is the error it was.
    std::fs::remove_file(agent_dir.join("device-token.json")).unwrap();
    let (code, _, err) = check(&agent_dir);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read token file"), "{err}");
    let (code, _, err) = run_cli(&[
        "run",
        "--url",
        &gw.url(),
        "--token-file",
        join.to_str().unwrap(),
        "--state-dir",
        agent_dir.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read token file"), "{err}");
}

/// A device token works only with its own device's signature and for its
/// own role: another key presenting it, or its device asking for role
/// operator with it, is refused with `AUTH_DEVICE_TOKEN_MISMATCH`.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_token_with_another_devices_key_or_role_is_refused() {
    let gw = TestGateway::start(&[]);
    let owner = DeviceIdentity::ephemeral("owner-1");
    let (_c, hello) = node_connect(&gw, &owner, Some(gw.token().expose()), None).await;
    let Outcome::Hello(hello) = hello else {
        panic!("the join token: {hello:?}")
    };
    let token = hello
        .auth
        .device_token
        .clone()
        .expect("a device token in hello-ok");
    assert!(hello.auth.issued_at_ms.is_some());
    drop(_c);

    let thief = DeviceIdentity::ephemeral("thief-1");
    let (_c, refused) = node_connect(&gw, &thief, None, Some(&token)).await;
    assert_eq!(detail(&refused), "AUTH_DEVICE_TOKEN_MISMATCH");
    let Outcome::Error(e, _) = &refused else {
        unreachable!()
    };
    assert!(e.message.contains("device token mismatch"), "{e}");
    // The owner: let in with it alone, and handed the same token back.
    let (_c, ok) = node_connect(&gw, &owner, None, Some(&token)).await;
    let Outcome::Hello(hello) = ok else {
        panic!("the owner's token: {ok:?}")
    };
    assert_eq!(hello.auth.device_token.as_deref(), Some(token.as_str()));
    assert_eq!(hello.auth.role, Role::Node);
    assert!(hello.auth.scopes.is_empty());
    // In `auth.token` (OpenClaw's gateway reads it there too): the same.
    let (_c, ok) = node_connect(&gw, &owner, Some(&token), None).await;
    let Outcome::Hello(hello) = ok else {
        panic!("the owner's token in auth.token: {ok:?}")
    };
    assert_eq!(hello.auth.device_token.as_deref(), Some(token.as_str()));
    // The owner asking for role operator with its node token.
    let mut c = RawClient::open(&gw.url()).await;
    let p = signed_operator(&c.challenge, &owner, &["operator.read"], None, Some(&token));
    assert_eq!(detail(&c.connect(&p).await), "AUTH_DEVICE_TOKEN_MISMATCH");
    let (_, _, metrics) = get(gw.addr, "/metrics");
    assert_eq!(
        series(
            &metrics,
            "clawnode_auth_failures_total{code=\"AUTH_DEVICE_TOKEN_MISMATCH\"}"
        ),
        2.0
    );
}

/// `clawnode devices rotate`: the old token is refused at once, the
/// agent's connection closes, it reconnects with its join token and is
/// issued a new one, which then works alone. Nothing secret is printed.
#[tokio::test(flavor = "multi_thread")]
async fn after_rotate_the_old_token_is_refused_and_the_agent_reconnects_with_a_new_one() {
    let gw = TestGateway::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let agent_dir = tmp.path().join("agent");
    let join = join_token_copy(&gw, tmp.path());
    let mut agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    let old = wait_stored_token(&agent, &agent_dir, "a device token", |_| true);
    let (identity, _) = DeviceIdentity::load_or_create(&agent_dir).unwrap();
    let device_id = identity.device_id().to_string();
    gw.wait_presence("the agent's row", |l| connected(l, &device_id))
        .await;

    let (code, out, err) = gw.operator_cli(&["devices", "rotate"], &[&device_id]);
    let rotated_at = Instant::now();
    assert_eq!(code, 0, "devices rotate: {err}");
    assert!(
        out.contains("rotated the node token") && out.contains("next connect with the join token"),
        "{out}"
    );
    assert!(!out.contains(&old) && !err.contains(&old));
    // Closed and back with a new token, issued over the join token.
    agent.wait_for_log("device token rotated", Duration::from_secs(10));
    let new = wait_stored_token(&agent, &agent_dir, "a new device token", |t| t != old);
    eprintln!(
        "the agent held a new token {:?} after the rotation's answer",
        rotated_at.elapsed()
    );
    gw.wait_presence("the agent back", |l| connected(l, &device_id))
        .await;
    agent.terminate();

    let (_c, refused) = node_connect(&gw, &identity, None, Some(&old)).await;
    assert_eq!(detail(&refused), "AUTH_DEVICE_TOKEN_MISMATCH");
    // The agent, its join token gone, connects with the new one.
    std::fs::remove_file(&join).unwrap();
    let mut agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    agent.wait_for_log("connected to", Duration::from_secs(20));
    gw.wait_presence("the agent back on its new token", |l| {
        connected(l, &device_id)
    })
    .await;
    assert_eq!(stored_token(&agent_dir).unwrap()["token"], new.as_str());
    agent.terminate();

    // Unknown devices and roles are told so.
    let (code, _, err) = gw.operator_cli(&["devices", "rotate"], &["no-such-device"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown deviceId/role"), "{err}");
    let (code, _, err) = gw.operator_cli(&["devices", "rotate"], &[&device_id, "--role", "boss"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown role"), "{err}");
}

/// `device.token.revoke` (OpenClaw's shape): the token is refused at once;
/// an agent that has only that token says so at error, drops it, and waits
/// the backoff maximum (no tight loop). A device revoked by an operator is
/// refused with its token as well (`DEVICE_REVOKED`).
#[tokio::test(flavor = "multi_thread")]
async fn after_revoke_the_device_token_is_refused() {
    let gw = TestGateway::start(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let agent_dir = tmp.path().join("agent");
    let join = join_token_copy(&gw, tmp.path());
    let mut agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    let token = wait_stored_token(&agent, &agent_dir, "a device token", |_| true);
    let (identity, _) = DeviceIdentity::load_or_create(&agent_dir).unwrap();
    let device_id = identity.device_id().to_string();
    agent.terminate();
    // From now on the agent has only its device token.
    std::fs::remove_file(&join).unwrap();
    let agent = spawn_agent(&gw.url(), &join, &agent_dir, &[]);
    gw.wait_presence("the agent on its device token", |l| {
        connected(l, &device_id)
    })
    .await;

    let mut op = open_operator(&gw, "cli", None, &["operator.pairing"]).await;
    // A node token needs operator.admin, as in OpenClaw.
    let denied = op
        .call(
            "device.token.revoke",
            json!({ "deviceId": device_id, "role": "node" }),
        )
        .await
        .expect_err("operator.pairing alone");
    assert_eq!(denied.message, "device token revocation denied");
    let mut op = open_operator(&gw, "cli", None, &["operator.admin"]).await;
    let answer = op
        .call(
            "device.token.revoke",
            json!({ "deviceId": device_id, "role": "node" }),
        )
        .await
        .expect("revoked");
    assert_eq!(answer["deviceId"], device_id.as_str());
    assert_eq!(answer["role"], "node");
    assert!(answer["revokedAtMs"].as_u64().is_some(), "{answer}");

    let (_c, refused) = node_connect(&gw, &identity, None, Some(&token)).await;
    assert_eq!(detail(&refused), "AUTH_DEVICE_TOKEN_MISMATCH");
    // The agent: closed, refused, told at error, its token dropped, and
    // waiting the backoff maximum before it tries again.
    agent.wait_for_log(
        "the gateway refused our device token",
        Duration::from_secs(20),
    );
    let line = agent.wait_for_log("reconnecting in 30.0s", Duration::from_secs(5));
    assert!(line.contains("AUTH_DEVICE_TOKEN_MISMATCH"), "{line}");
    assert!(
        stored_token(&agent_dir).is_none(),
        "the refused token is dropped"
    );
    assert_eq!(agent.count_log("the gateway refused our device token"), 1);

    // A device revoked by an operator: its (new) token is refused too.
    let (_c, hello) = node_connect(&gw, &identity, Some(gw.token().expose()), None).await;
    let Outcome::Hello(hello) = hello else {
        panic!("the join token issues a new token: {hello:?}")
    };
    let fresh = hello.auth.device_token.clone().expect("a new device token");
    assert_ne!(fresh, token);
    drop(_c);
    let (code, _, err) = gw.operator_cli(&["devices", "revoke"], &[&device_id]);
    assert_eq!(code, 0, "{err}");
    let (_c, refused) = node_connect(&gw, &identity, None, Some(&fresh)).await;
    assert_eq!(detail(&refused), "DEVICE_REVOKED");
}

/// Part 1's approved operator device: an operator that connects with the
/// operator token and a device identity is issued an operator token with
/// the scopes it connected with; with that token alone it is an operator
/// with those scopes (or fewer), never more, and never a node.
#[tokio::test(flavor = "multi_thread")]
async fn an_approved_operator_device_connects_with_its_token_and_its_scopes() {
    let gw = TestGateway::start(&[]);
    let console = DeviceIdentity::ephemeral("console-1");
    let scopes = ["operator.read", "operator.pairing"];
    let mut c = RawClient::open(&gw.url()).await;
    let op_token = gw.operator_token();
    let p = signed_operator(
        &c.challenge,
        &console,
        &scopes,
        Some(op_token.expose()),
        None,
    );
    let Outcome::Hello(hello) = c.connect(&p).await else {
        panic!("the operator token with a device")
    };
    let token = hello
        .auth
        .device_token
        .clone()
        .expect("an operator device token");
    assert_eq!(hello.auth.role, Role::Operator);
    drop(c);

    let mut c = RawClient::open(&gw.url()).await;
    let p = signed_operator(&c.challenge, &console, &scopes, None, Some(&token));
    let Outcome::Hello(hello) = c.connect(&p).await else {
        panic!("its device token alone")
    };
    assert_eq!(hello.auth.scopes, scopes);
    assert_eq!(hello.auth.device_token.as_deref(), Some(token.as_str()));
    let list = c
        .call("device.pair.list", json!({}))
        .await
        .expect("pairing scope");
    assert!(list["paired"].is_array());
    // Not admin: managing another device's token is denied.
    let denied = c
        .call(
            "device.token.rotate",
            json!({ "deviceId": "someone-else", "role": "operator" }),
        )
        .await
        .expect_err("cross-device");
    assert_eq!(denied.message, "device token rotation denied");
    // Its own operator token, rotated in band: the answer carries the new
    // token (OpenClaw's tokenDelivery), the connection closes, the old
    // token is refused and the new one works.
    let rotated = c
        .call(
            "device.token.rotate",
            json!({ "deviceId": console.device_id(), "role": "operator", "scopes": ["operator.read"] }),
        )
        .await
        .expect("self rotation");
    assert_eq!(rotated["tokenDelivery"], "in-band");
    assert_eq!(rotated["scopes"], json!(["operator.read"]));
    let new = rotated["token"]
        .as_str()
        .expect("the new token")
        .to_string();
    assert!(c.read_close().await.is_some());
    let mut c = RawClient::open(&gw.url()).await;
    let p = signed_operator(
        &c.challenge,
        &console,
        &["operator.read"],
        None,
        Some(&token),
    );
    assert_eq!(detail(&c.connect(&p).await), "AUTH_DEVICE_TOKEN_MISMATCH");
    let mut c = RawClient::open(&gw.url()).await;
    let p = signed_operator(&c.challenge, &console, &["operator.read"], None, Some(&new));
    assert_eq!(detail(&c.connect(&p).await), "hello-ok");

    // More than it was approved with (narrowed to operator.read now).
    for (asked, role) in [(&["operator.pairing"][..], "operator"), (&[][..], "node")] {
        let mut c = RawClient::open(&gw.url()).await;
        let outcome = if role == "node" {
            c.connect(&signed_node_connect(
                &console,
                node_client("x", None),
                &Credentials {
                    shared: None,
                    device_token: Some(Secret::new(&new)),
                },
                &c.challenge,
            ))
            .await
        } else {
            let p = signed_operator(&c.challenge, &console, asked, None, Some(&new));
            c.connect(&p).await
        };
        let expected = if role == "node" {
            "AUTH_DEVICE_TOKEN_MISMATCH"
        } else {
            "AUTH_SCOPE_MISMATCH"
        };
        assert_eq!(detail(&outcome), expected, "{role} {asked:?}");
    }
}
