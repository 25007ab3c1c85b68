//! Every bad handshake gets its own error, and the gateway keeps serving.

mod common;

use clawnode::config::Secret;
use clawnode::identity::DeviceIdentity;
use clawnode::protocol::{ErrorCode, Frame};
use common::node::node_params;
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn detail(e: &clawnode::protocol::ErrorShape) -> &str {
    e.detail_code_str().unwrap_or("")
}

async fn still_serving(gw: &TestGateway) {
    let list = gw.presence().await;
    assert!(list.iter().any(|e| e.reason.as_deref() == Some("self")));
}

fn expect_error(
    o: Outcome,
) -> (
    clawnode::protocol::ErrorShape,
    Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) {
    match o {
        Outcome::Error(e, close) => (e, close),
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_and_missing_tokens() {
    let gw = TestGateway::start(&[]);
    let mut c = RawClient::open(&gw.url()).await;
    let (e, close) = expect_error(
        c.connect(&operator_params(
            "ui",
            None,
            &[],
            Some(&Secret::new("wrong")),
        ))
        .await,
    );
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert_eq!(detail(&e), "AUTH_TOKEN_MISMATCH");
    assert_eq!(close.unwrap().code, CloseCode::Policy);

    let mut c = RawClient::open(&gw.url()).await;
    let (e, _) = expect_error(c.connect(&operator_params("ui", None, &[], None)).await);
    assert_eq!(detail(&e), "AUTH_TOKEN_MISSING");
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_proof_failures_have_their_codes() {
    let gw = TestGateway::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = DeviceIdentity::load_or_create(dir.path()).unwrap();
    let token = gw.token();

    // A valid node connects.
    let mut c = RawClient::open(&gw.url()).await;
    let p = node_params(&c, &id, &token);
    assert!(matches!(c.connect(&p).await, Outcome::Hello(_)));

    // Nonces are single use: the same valid connect frame replayed on a
    // new connection (which gets a new challenge) is refused.
    let mut replay = RawClient::open(&gw.url()).await;
    assert_ne!(replay.challenge.nonce, c.challenge.nonce);
    assert_eq!(
        detail(&expect_error(replay.connect(&p).await).0),
        "DEVICE_AUTH_NONCE_MISMATCH"
    );

    // Tampered signature.
    let mut c = RawClient::open(&gw.url()).await;
    let mut p = node_params(&c, &id, &token);
    let dev = p.device.as_mut().unwrap();
    let mut sig = dev.signature.clone().into_bytes();
    sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
    dev.signature = String::from_utf8(sig).unwrap();
    let (e, close) = expect_error(c.connect(&p).await);
    assert_eq!(detail(&e), "DEVICE_AUTH_SIGNATURE_INVALID");
    assert_eq!(close.unwrap().code, CloseCode::Policy);

    // Nonce from another challenge.
    let mut c = RawClient::open(&gw.url()).await;
    let mut p = node_params(&c, &id, &token);
    p.device.as_mut().unwrap().nonce = "not-the-nonce".into();
    assert_eq!(
        detail(&expect_error(c.connect(&p).await).0),
        "DEVICE_AUTH_NONCE_MISMATCH"
    );

    // Device id that is not the key's fingerprint.
    let mut c = RawClient::open(&gw.url()).await;
    let mut p = node_params(&c, &id, &token);
    p.device.as_mut().unwrap().id = "0".repeat(64);
    assert_eq!(
        detail(&expect_error(c.connect(&p).await).0),
        "DEVICE_AUTH_DEVICE_ID_MISMATCH"
    );

    // Signed too long ago.
    let mut c = RawClient::open(&gw.url()).await;
    let mut challenge = c.challenge.clone();
    challenge.ts -= 10 * 60 * 1000;
    c.challenge = challenge;
    let p = node_params(&c, &id, &token);
    assert_eq!(
        detail(&expect_error(c.connect(&p).await).0),
        "DEVICE_AUTH_SIGNATURE_EXPIRED"
    );

    // A node without a device identity.
    let mut c = RawClient::open(&gw.url()).await;
    let mut p = node_params(&c, &id, &token);
    p.device = None;
    let (e, close) = expect_error(c.connect(&p).await);
    assert_eq!(e.code, ErrorCode::NotPaired);
    assert_eq!(detail(&e), "DEVICE_IDENTITY_REQUIRED");
    assert_eq!(close.unwrap().code, CloseCode::Policy);

    // Protocol too new.
    let mut c = RawClient::open(&gw.url()).await;
    let mut p = operator_params("ui", None, &[], Some(&token));
    p.min_protocol = 5;
    p.max_protocol = 6;
    let (e, close) = expect_error(c.connect(&p).await);
    assert_eq!(detail(&e), "PROTOCOL_MISMATCH");
    assert_eq!(close.unwrap().code, CloseCode::Protocol);

    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn first_frame_must_be_connect() {
    let gw = TestGateway::start(&[]);
    let mut c = RawClient::open(&gw.url()).await;
    c.send_text(Frame::request("x1", "system-presence", json!({})).to_text())
        .await;
    let (e, close) = expect_error(c.await_response("x1").await);
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("first request must be connect"), "{e}");
    assert_eq!(close.unwrap().code, CloseCode::Policy);

    // An event instead of a request: closed with 1008.
    let mut c = RawClient::open(&gw.url()).await;
    c.send_text(r#"{"type":"event","event":"hello"}"#.into())
        .await;
    assert_eq!(c.read_close().await.unwrap().code, CloseCode::Policy);
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_and_oversized_preauth_frames_are_refused() {
    let gw = TestGateway::start(&[]);
    let mut c = RawClient::open(&gw.url()).await;
    c.send_text("{this is not json".into()).await;
    let close = c.read_close().await.unwrap();
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("invalid request frame"), "{close:?}");

    let mut c = RawClient::open(&gw.url()).await;
    let big = format!(
        r#"{{"type":"req","id":"1","method":"connect","params":{{"pad":"{}"}}}}"#,
        "x".repeat(65 * 1024)
    );
    c.send_text(big).await;
    let close = c.read_close().await.unwrap();
    assert_eq!(close.code, CloseCode::Size);

    // Just under the cap is read and judged on its content.
    let mut c = RawClient::open(&gw.url()).await;
    let small = format!(
        r#"{{"type":"req","id":"1","method":"nope","params":{{"pad":"{}"}}}}"#,
        "x".repeat(60 * 1024)
    );
    c.send_text(small).await;
    let (e, _) = expect_error(c.await_response("1").await);
    assert!(e.message.contains("first request must be connect"));
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_methods_keep_the_connection_usable() {
    let gw = TestGateway::start(&[]);
    let mut c = open_operator(&gw, "ui", Some("u-1"), &["operator.read"]).await;
    let e = c.call("no.such.method", json!({})).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("unknown method"));
    let list = c.call("system-presence", json!({})).await.unwrap();
    assert!(list.as_array().unwrap().len() >= 2);
    let health = c.call("health", json!({})).await.unwrap();
    assert_eq!(health["ok"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_timeout_closes_silent_clients() {
    // A client that never sends connect is closed with 1008 at the
    // handshake deadline (2 s here, 10 s by default) and the gateway keeps
    // serving others meanwhile. `read_close` waits up to 10 s: a margin
    // for a loaded machine, not the deadline under test.
    let gw = TestGateway::start_with_config("[gateway]\nhandshake_timeout_secs = 2\n");
    let opened = std::time::Instant::now();
    let mut c = RawClient::open(&gw.url()).await;
    still_serving(&gw).await;
    let close = c.read_close().await.expect("close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("handshake timeout"));
    let after = opened.elapsed();
    assert!(
        after >= std::time::Duration::from_millis(1900),
        "closed after {after:?}, before the 2 s deadline"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_payload_bytes_reaches_the_policy_clients_are_sent() {
    let gw = TestGateway::start_with_config("[gateway]\nmax_payload_bytes = 131072\n");
    let mut c = RawClient::open(&gw.url()).await;
    let params = operator_params(
        "ui",
        Some("policy-1"),
        &["operator.read"],
        Some(&gw.operator_token()),
    );
    match c.connect(&params).await {
        Outcome::Hello(hello) => assert_eq!(hello.policy.max_payload, 131_072),
        other => panic!("connect failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_pipelined_behind_connect_are_answered_under_the_session_limit() {
    // `connect` and two requests in one write, before reading anything:
    // what followed `connect` reaches the session (the pre-auth reader
    // hands it on), and the second request, 200 KiB, is over the 64 KiB
    // pre-auth limit but within `max_payload`, which holds after hello-ok.
    use common::raw_ws::{RawFrame, RawWs, Received};
    let gw = TestGateway::start(&[]);
    let mut ws = RawWs::connect(gw.addr).await;
    let params = operator_params("cli", None, &["operator.read"], Some(&gw.operator_token()));
    let mut bytes = RawFrame::new(1, Frame::request("c1", "connect", &params).to_text()).encode();
    let health = json!({ "type": "req", "id": "h1", "method": "health" });
    bytes.extend(RawFrame::new(1, health.to_string()).encode());
    let big = json!({ "type": "req", "id": "h2", "method": "health", "params": { "pad": "x".repeat(200 * 1024) } });
    bytes.extend(RawFrame::new(1, big.to_string()).encode());
    assert!(ws.write(&bytes).await, "the gateway closed");
    let mut answered = Vec::new();
    while answered.len() < 3 {
        match ws.recv(RAW_WAIT).await {
            Some(Received::Text(t)) => match Frame::parse(&t) {
                Ok(Frame::Res(r)) => {
                    assert!(r.ok, "{t}");
                    answered.push(r.id);
                }
                Ok(_) => {} // the challenge, events
                Err(e) => panic!("unparseable frame ({e}): {t}"),
            },
            Some(Received::Ping(_)) => {}
            other => panic!("after {answered:?}: {other:?}"),
        }
    }
    assert_eq!(answered, ["c1", "h1", "h2"]);
}
