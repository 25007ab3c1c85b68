//! Issue 15, findings 5 and 8: what a client may not put into a presence
//! row. Beacon `text` carries no control characters (line breaks fold into
//! spaces, anything else is refused, as in every other field), and
//! `mode: "gateway"` and the reasons the gateway assigns (`self`,
//! `disconnect`) are refused, so no client's row is tagged and sorted as
//! the gateway's.

mod common;

use clawnode::identity::DeviceIdentity;
use clawnode::protocol::{method, ErrorCode};
use common::node::node_params;
use common::*;
use serde_json::json;

/// A node connected with its own device key; returns it and its instance id.
async fn node(gw: &TestGateway, dir: &std::path::Path) -> (RawClient, String) {
    let (id, _) = DeviceIdentity::load_or_create(dir).unwrap();
    let mut c = RawClient::open(&gw.url()).await;
    let p = node_params(&c, &id, &gw.token());
    match c.connect(&p).await {
        Outcome::Hello(_) => (c, id.instance_id().to_string()),
        other => panic!("node connect failed: {other:?}"),
    }
}

fn refused(answer: Result<serde_json::Value, clawnode::protocol::ErrorShape>, why: &str) {
    match answer {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
            assert!(e.message.contains(why), "{why:?} not in {:?}", e.message);
        }
        Ok(v) => panic!("accepted, wanted a refusal naming {why:?}: {v}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn beacon_text_carries_no_control_characters() {
    let gw = TestGateway::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (mut c, instance) = node(&gw, dir.path()).await;
    for text in [
        "osc52 \x1b]52;c;SGVsbG8=\x07",
        "bell\x07",
        "nul\0",
        "csi \u{9b}2J",
        "del\x7f",
        "bidi \u{202e}txt",
    ] {
        refused(
            c.call(method::SYSTEM_EVENT, json!({ "text": text })).await,
            "text must not contain control characters",
        );
    }
    // A multi-line note stays one line.
    c.call(
        method::SYSTEM_EVENT,
        json!({ "text": "first\nsecond\r\n\tthird", "reason": "periodic" }),
    )
    .await
    .unwrap();
    let list = gw.presence().await;
    let row = list
        .iter()
        .find(|e| e.instance_id.as_deref() == Some(instance.as_str()))
        .expect("the node's row");
    assert_eq!(row.text.as_deref(), Some("first second   third"));
    for e in &list {
        let text = e.text.as_deref().unwrap_or_default();
        assert!(
            !text.chars().any(clawnode::safe_text::is_unsafe),
            "{text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_gateway_s_row_is_the_gateway() {
    let gw = TestGateway::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (mut c, instance) = node(&gw, dir.path()).await;
    refused(
        c.call(
            method::SYSTEM_EVENT,
            json!({ "text": "hi", "mode": "gateway" }),
        )
        .await,
        "reserved for the gateway",
    );
    refused(
        c.call(
            method::SYSTEM_EVENT,
            json!({ "text": "hi", "mode": "Gateway " }),
        )
        .await,
        "reserved for the gateway",
    );
    for reason in ["self", "disconnect"] {
        refused(
            c.call(
                method::SYSTEM_EVENT,
                json!({ "text": "hi", "reason": reason }),
            )
            .await,
            "assigned by the gateway",
        );
    }
    // At connect: an operator (or page) claiming to be a gateway.
    let mut op = RawClient::open(&gw.url()).await;
    match op
        .connect(&operator_params(
            "gateway",
            Some("fake-gw"),
            &["operator.read"],
            Some(&gw.operator_token()),
        ))
        .await
    {
        Outcome::Error(e, _) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains("reserved for the gateway"), "{e:?}");
        }
        other => panic!("a client with mode gateway was let in: {other:?}"),
    }
    let list = gw.presence().await;
    let gateways: Vec<_> = list
        .iter()
        .filter(|e| {
            e.mode
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case("gateway"))
                || e.reason.as_deref() == Some("self")
        })
        .collect();
    assert_eq!(gateways.len(), 1, "one gateway row: {gateways:?}");
    assert_ne!(gateways[0].instance_id.as_deref(), Some(instance.as_str()));
}
