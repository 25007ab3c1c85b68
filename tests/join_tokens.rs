//! Join tokens for enrolment (issue 16, part 6), with the real binary:
//! `clawnode join-token create` prints a token once; an agent holding it
//! enrols (role node), shows in presence and in `clawnode devices list`
//! with the token's id; a new device takes a use, a known one reconnecting
//! takes none; a copy of the token used after it expired, was revoked or
//! used up is refused with `AUTH_TOKEN_MISMATCH` and a reason.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use clawnode::config::Secret;
use clawnode::identity::DeviceIdentity;
use clawnode::protocol::{ErrorShape, PresenceEntry};
use common::node::node_params;
use common::*;
use serde_json::Value;

/// `clawnode join-token create` with `args`: the token and its id. Asserts
/// that stdout is the token alone, and stderr says what it is (its id) but
/// never holds it.
fn create_token(gw: &TestGateway, args: &[&str]) -> (Secret, String) {
    let (code, out, err) = gw.operator_cli(&["join-token", "create"], args);
    assert_eq!(code, 0, "join-token create failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is the token alone: {out:?}");
    let token = lines[0].trim().to_string();
    assert!(token.starts_with("cnjoin_") && token.len() > 40, "{token}");
    assert!(!err.contains(&token), "the token on stderr: {err}");
    assert!(err.contains("shown only this once"), "{err}");
    // "join token <id>: enrols up to ..."
    let id = err
        .strip_prefix("join token ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no id in {err:?}"))
        .to_string();
    assert_eq!(token_with_id(gw, &id)["state"], "active");
    (Secret::new(token), id)
}

/// `clawnode join-token list --json`'s tokens.
fn tokens(gw: &TestGateway) -> Vec<Value> {
    let (code, out, err) = gw.operator_cli(&["join-token", "list"], &["--json"]);
    assert_eq!(code, 0, "join-token list failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["joinTokens"].as_array().cloned().unwrap_or_default()
}

fn token_with_id(gw: &TestGateway, id: &str) -> Value {
    tokens(gw)
        .into_iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("join token {id} not listed"))
}

/// `clawnode devices list --json`'s approved device `device_id`.
fn paired(gw: &TestGateway, device_id: &str) -> Option<Value> {
    let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
    assert_eq!(code, 0, "devices list failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["paired"]
        .as_array()?
        .iter()
        .find(|d| d["deviceId"] == device_id)
        .cloned()
}

fn connected(list: &[PresenceEntry], device_id: &str) -> bool {
    list.iter().any(|e| {
        e.device_id.as_deref() == Some(device_id) && e.reason.as_deref() != Some("disconnect")
    })
}

/// A node's signed connect of `identity` with `token`: how it ended.
async fn connect_with(gw: &TestGateway, identity: &DeviceIdentity, token: &Secret) -> Outcome {
    let mut c = RawClient::open(&gw.url()).await;
    let params = node_params(&c, identity, token);
    c.connect(&params).await
}

/// The refusal of a created join token: `AUTH_TOKEN_MISMATCH`, with
/// `details.reason` `reason` and the token's id, and a message saying why.
fn refused_for(outcome: Outcome, id: &str, reason: &str) -> ErrorShape {
    let Outcome::Error(e, _) = outcome else {
        panic!("a {reason} join token let a new device in: {outcome:?}")
    };
    assert_eq!(e.code.as_str(), "INVALID_REQUEST", "{e:?}");
    assert_eq!(e.detail_code_str(), Some("AUTH_TOKEN_MISMATCH"), "{e:?}");
    let details = e.details.clone().unwrap_or_default();
    assert_eq!(details["reason"], reason, "{e:?}");
    assert_eq!(details["joinTokenId"], id, "{e:?}");
    assert!(
        e.message.contains(&format!("join token {id}"))
            && e.message.contains("clawnode join-token create"),
        "{}",
        e.message
    );
    e
}

fn write_token(dir: &Path, token: &Secret) -> std::path::PathBuf {
    let path = dir.join("join.token");
    write_token_file(&path, token.expose());
    path
}

/// An agent given a created join token enrols: it shows in presence, and
/// `clawnode devices list` names the token it enrolled with; the token
/// shows one use, a last-use time and never its secret (nor does any log,
/// at trace level).
/// A device it knows reconnecting takes no use; once used up, a new device
/// is refused and the token says `used-up`.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_enrolled_with_a_created_join_token_shows_in_presence_and_devices_list() {
    // Every level logged: the secret must be in none of it.
    let gw = TestGateway::start_with_env(&[], &[("RUST_LOG", "trace")]);
    let (token, id) = create_token(&gw, &["--uses", "2", "--description", "rack 4"]);
    let t = token_with_id(&gw, &id);
    assert_eq!(
        (&t["state"], &t["uses"], &t["used"], &t["description"]),
        (
            &Value::from("active"),
            &Value::from(2),
            &Value::from(0),
            &Value::from("rack 4")
        ),
        "{t:#}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let token_file = write_token(tmp.path(), &token);
    let agent_dir = tmp.path().join("agent");
    let agent = spawn_agent(
        &gw.url(),
        &token_file,
        &agent_dir,
        &["--display-name", "joined-1"],
    );
    let list = gw
        .wait_presence("the enrolled agent's row", |l| {
            l.iter()
                .any(|e| e.host.as_deref() == Some("joined-1") && e.device_id.is_some())
        })
        .await;
    let device_id = list
        .iter()
        .find(|e| e.host.as_deref() == Some("joined-1"))
        .and_then(|e| e.device_id.clone())
        .expect("a device id");
    let record = paired(&gw, &device_id).expect("the agent among the approved devices");
    assert_eq!(record["joinTokenId"], id.as_str(), "{record:#}");
    assert_eq!(record["roles"], serde_json::json!(["node"]), "{record:#}");
    let (code, table, _) = gw.operator_cli(&["devices", "list"], &[]);
    assert_eq!(code, 0);
    assert!(
        table.contains("JOIN TOKEN") && table.contains(&id),
        "{table}"
    );
    let t = token_with_id(&gw, &id);
    assert_eq!(t["used"], 1, "{t:#}");
    assert!(t["lastUsedAtMs"].as_u64().is_some(), "{t:#}");
    let (_, human, _) = gw.operator_cli(&["join-token", "list"], &[]);
    assert!(
        human.contains(&id) && human.contains("1/2") && human.contains("rack 4"),
        "{human}"
    );

    // A second new device takes the last use; reconnecting takes none.
    let second = DeviceIdentity::ephemeral("inst-second");
    let Outcome::Hello(_) = connect_with(&gw, &second, &token).await else {
        panic!("the second new device was refused");
    };
    let Outcome::Hello(_) = connect_with(&gw, &second, &token).await else {
        panic!("a device the token enrolled was refused on reconnecting");
    };
    let t = token_with_id(&gw, &id);
    assert_eq!(
        (&t["used"], &t["state"]),
        (&Value::from(2), &Value::from("used-up"))
    );
    // Used up: a third new device is refused, and nothing is stored of it.
    let third = DeviceIdentity::ephemeral("inst-third");
    let e = refused_for(
        connect_with(&gw, &third, &token).await,
        &id,
        "join-token-used-up",
    );
    assert!(e.message.contains("(2 of 2)"), "{}", e.message);
    assert!(paired(&gw, third.device_id()).is_none());
    // The enrolled agent is still connected, and the secret was never
    // logged, nor listed.
    assert!(connected(&gw.presence().await, &device_id));
    let (_, raw_list, _) = gw.operator_cli(&["join-token", "list"], &["--json"]);
    assert!(!raw_list.contains(token.expose()));
    assert!(
        !gw.proc.log_text().contains(token.expose()),
        "the gateway logged the join token"
    );
    assert!(
        !agent.log_text().contains(token.expose()),
        "the agent logged the join token"
    );
}

/// The second half of "an agent enrolled with a join token that then
/// expires keeps connecting with its device token; a copy of the join token
/// used after expiry is refused": a token with a 2 s lifetime enrols a
/// device; after it expired, a copy is refused (`join-token-expired`) to a
/// new device and to the one it enrolled. A revoked token is refused at
/// once (`join-token-revoked`); the device it enrolled stays approved.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_of_an_expired_or_revoked_join_token_is_refused() {
    let gw = TestGateway::start(&[]);
    let (token, id) = create_token(&gw, &["--ttl", "2s", "--uses", "5"]);
    let expires_at = token_with_id(&gw, &id)["expiresAtMs"]
        .as_u64()
        .expect("expiresAtMs");
    let enrolled = DeviceIdentity::ephemeral("inst-enrolled");
    let Outcome::Hello(_) = connect_with(&gw, &enrolled, &token).await else {
        panic!("a live token was refused");
    };

    // The expiry itself is the one wait; then a refusal is expected at
    // once, polled for at most 5 s.
    let now = clawnode::clock::now_ms();
    tokio::time::sleep(Duration::from_millis(expires_at.saturating_sub(now) + 50)).await;
    let copy = DeviceIdentity::ephemeral("inst-copy");
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = loop {
        match connect_with(&gw, &copy, &token).await {
            Outcome::Hello(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the expired join token still let a new device in 5 s after its expiry"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            refused => break refused_for(refused, &id, "join-token-expired"),
        }
    };
    assert!(e.message.contains("expired"), "{}", e.message);
    refused_for(
        connect_with(&gw, &enrolled, &token).await,
        &id,
        "join-token-expired",
    );
    assert_eq!(token_with_id(&gw, &id)["state"], "expired");
    assert!(paired(&gw, copy.device_id()).is_none());

    // Revoked: refused at once; the device it enrolled keeps its record.
    let (token, id) = create_token(&gw, &["--ttl", "1h", "--uses", "3"]);
    let device = DeviceIdentity::ephemeral("inst-revoked");
    let Outcome::Hello(_) = connect_with(&gw, &device, &token).await else {
        panic!("a live token was refused");
    };
    let (code, out, err) = gw.operator_cli(&["join-token", "revoke"], &[&id]);
    assert_eq!(code, 0, "revoke failed: {err}");
    assert!(out.contains("admits nobody"), "{out}");
    let other = DeviceIdentity::ephemeral("inst-other");
    refused_for(
        connect_with(&gw, &other, &token).await,
        &id,
        "join-token-revoked",
    );
    assert_eq!(token_with_id(&gw, &id)["state"], "revoked");
    let record = paired(&gw, device.device_id()).expect("the enrolled device still approved");
    assert_eq!(record["joinTokenId"], id.as_str());
    let (code, _, err) = gw.operator_cli(&["join-token", "revoke"], &["nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown join token id"), "{err}");
}

/// The first half of the sentence above: an agent enrolled with a join
/// token keeps connecting after the token expired, with the device token
/// the gateway gave it (`hello-ok.auth.deviceToken`, part 5). Without
/// device tokens the expired join token in its token file is all it has,
/// and it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_enrolled_with_a_join_token_keeps_connecting_after_it_expired() {
    let gw = TestGateway::start(&[]);
    let (token, id) = create_token(&gw, &["--ttl", "3s"]);
    let expires_at = token_with_id(&gw, &id)["expiresAtMs"]
        .as_u64()
        .expect("expiresAtMs");
    let tmp = tempfile::tempdir().unwrap();
    let token_file = write_token(tmp.path(), &token);
    let agent_dir = tmp.path().join("agent");
    let host = ["--display-name", "joined-expiring"];
    let mut agent = spawn_agent(&gw.url(), &token_file, &agent_dir, &host);
    let list = gw
        .wait_presence("the enrolled agent's row", |l| {
            l.iter()
                .any(|e| e.host.as_deref() == Some("joined-expiring") && e.device_id.is_some())
        })
        .await;
    let device_id = list
        .iter()
        .find(|e| e.host.as_deref() == Some("joined-expiring"))
        .and_then(|e| e.device_id.clone())
        .expect("a device id");
    agent.terminate();
    let now = clawnode::clock::now_ms();
    tokio::time::sleep(Duration::from_millis(expires_at.saturating_sub(now) + 50)).await;
    assert_eq!(token_with_id(&gw, &id)["state"], "expired");
    // The same agent (same state dir, same expired token file) again.
    let _agent = spawn_agent(&gw.url(), &token_file, &agent_dir, &host);
    gw.wait_presence_within(
        "the agent back after its join token expired",
        Duration::from_secs(20),
        |l| connected(l, &device_id),
    )
    .await;
    // A copy of the token is still refused to a new device.
    let copy = DeviceIdentity::ephemeral("inst-copy");
    refused_for(
        connect_with(&gw, &copy, &token).await,
        &id,
        "join-token-expired",
    );
}

/// Under `admission = "manual"` a created join token is a credential, not
/// an approval: a new device with it waits (`PAIRING_REQUIRED`), its
/// request names the token, and its use is counted when an operator
/// approves it; the record then names the token too.
#[tokio::test(flavor = "multi_thread")]
async fn under_manual_admission_a_created_join_token_still_waits_for_approval() {
    let gw = TestGateway::start_with_config("[gateway]\nadmission = \"manual\"\n");
    let (token, id) = create_token(&gw, &["--uses", "1"]);
    let device = DeviceIdentity::ephemeral("inst-manual");
    let Outcome::Error(e, _) = connect_with(&gw, &device, &token).await else {
        panic!("a join token approved a device under manual admission");
    };
    assert_eq!(e.detail_code_str(), Some("PAIRING_REQUIRED"), "{e:?}");
    let request_id = e.details.as_ref().expect("details")["requestId"]
        .as_str()
        .expect("a request id")
        .to_string();
    let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["pending"][0]["joinTokenId"], id.as_str(), "{list:#}");
    assert_eq!(token_with_id(&gw, &id)["used"], 0);

    let (code, _, err) = gw.operator_cli(&["devices", "approve"], &[&request_id]);
    assert_eq!(code, 0, "{err}");
    let Outcome::Hello(_) = connect_with(&gw, &device, &token).await else {
        panic!("the approved device was refused");
    };
    let record = paired(&gw, device.device_id()).expect("approved");
    assert_eq!(record["joinTokenId"], id.as_str(), "{record:#}");
    let t = token_with_id(&gw, &id);
    assert_eq!(
        (&t["used"], &t["state"]),
        (&Value::from(1), &Value::from("used-up"))
    );
    // Used up: the next new device is refused before it can ask.
    let next = DeviceIdentity::ephemeral("inst-next");
    refused_for(
        connect_with(&gw, &next, &token).await,
        &id,
        "join-token-used-up",
    );
}

/// Bounded: at most 100 live join tokens; the next is refused with a
/// message saying what to do (through the CLI too), and revoking one makes
/// room again.
#[tokio::test(flavor = "multi_thread")]
async fn at_most_a_hundred_live_join_tokens() {
    use clawnode::protocol::join_token::MAX_LIVE;
    let gw = TestGateway::start(&[]);
    let mut op = open_operator(&gw, "cli", None, &["operator.pairing"]).await;
    let mut first = None;
    for _ in 0..MAX_LIVE {
        let created = op
            .call("clawnode.joinToken.create", serde_json::json!({}))
            .await
            .expect("a token within the bound");
        first.get_or_insert(created["joinToken"]["id"].as_str().unwrap().to_string());
    }
    let e = op
        .call("clawnode.joinToken.create", serde_json::json!({}))
        .await
        .expect_err("a token past the bound");
    assert!(
        e.message.contains("100 join tokens are live already")
            && e.message.contains("clawnode join-token revoke"),
        "{}",
        e.message
    );
    let (code, out, err) = gw.operator_cli(&["join-token", "create"], &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("at most 100"), "{err}");
    let first = first.expect("an id");
    let (code, _, err) = gw.operator_cli(&["join-token", "revoke"], &[&first]);
    assert_eq!(code, 0, "{err}");
    create_token(&gw, &[]);
}

/// Bad input: one clear line each, before anything is sent.
#[test]
fn bad_lifetimes_and_uses_are_one_clear_error() {
    for (args, says) in [
        (["--ttl", "1x"], "30s, 30m, 1h or 7d"),
        (["--ttl", "400d"], "from 1s to 365d"),
        (["--uses", "0"], "from 1 to 100000"),
    ] {
        let mut all = vec!["join-token", "create"];
        all.extend(args);
        let (code, out, err) = run_cli(&all);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
