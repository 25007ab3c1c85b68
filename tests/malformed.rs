//! A battery of malformed frames, as data (`tests/cases/malformed_frames.json`),
//! each sent on its own connection to the real gateway, before `connect`
//! (pre-auth) or after it (connected). Each must get its answer — an
//! `INVALID_REQUEST` response tied to the frame's id where one can be read,
//! and the close the protocol says — and the gateway must keep serving
//! another client throughout.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Deserialize)]
struct Case {
    name: String,
    phase: String,
    #[serde(default)]
    text: Option<String>,
    /// Overrides merged into a well-formed operator `connect` (id "c").
    #[serde(default)]
    connect: Option<Value>,
    #[serde(default)]
    binary_hex: Option<String>,
    #[serde(default)]
    fragments: Vec<String>,
    /// Sent after the client's close frame.
    #[serde(default)]
    after_close: Option<String>,
    /// Expected error code of the response.
    #[serde(default)]
    error: Option<String>,
    /// Expected success of the response.
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    id: Option<String>,
    /// Expected close code.
    #[serde(default)]
    close: Option<u16>,
}

/// `REPEAT:c:n` stands for `c` repeated `n` times (inside strings too).
fn expand(text: &str) -> String {
    let Some(start) = text.find("REPEAT:") else {
        return text.to_string();
    };
    let rest = &text[start + 7..];
    let mut parts = rest.splitn(3, ':');
    let unit = parts.next().unwrap();
    let tail = parts.next().unwrap();
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    let count: usize = digits.parse().unwrap();
    let after = &tail[digits.len()..];
    format!("{}{}{}", &text[..start], unit.repeat(count), expand(after))
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(slot) if v.is_object() && slot.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn expand_value(v: &mut Value) {
    match v {
        Value::String(s) => *s = expand(s),
        Value::Array(a) => a.iter_mut().for_each(expand_value),
        Value::Object(o) => o.values_mut().for_each(expand_value),
        _ => {}
    }
}

/// What came back: the response (if any) and the close code (if closed).
#[derive(Debug, Default)]
struct Seen {
    response: Option<Value>,
    close: Option<u16>,
}

async fn observe(ws: &mut Ws, want_close: bool) -> Seen {
    let mut seen = Seen::default();
    loop {
        let wait = if seen.response.is_some() && !want_close {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "res" && seen.response.is_none() {
                    seen.response = Some(v);
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                seen.close = Some(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                return seen;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => {
                seen.close = seen.close.or(Some(1006));
                return seen;
            }
            Err(_) => return seen,
        }
    }
}

async fn send_case(ws: &mut Ws, case: &Case, token: &str) {
    if let Some(patch) = &case.connect {
        let mut params = json!({
            "minProtocol": 3, "maxProtocol": 4, "role": "operator", "scopes": ["operator.read"],
            "client": {"id": "battery", "version": "1", "platform": "linux", "mode": "cli"},
            "auth": {"token": token},
        });
        let mut patch = patch.clone();
        expand_value(&mut patch);
        merge(&mut params, &patch);
        let frame = json!({"type": "req", "id": "c", "method": "connect", "params": params});
        ws.send(Message::text(frame.to_string())).await.unwrap();
    } else if let Some(text) = &case.text {
        ws.send(Message::text(expand(text))).await.unwrap();
    } else if let Some(hex) = &case.binary_hex {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ws.send(Message::binary(bytes)).await.unwrap();
    } else if !case.fragments.is_empty() {
        let last = case.fragments.len() - 1;
        for (i, part) in case.fragments.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = WsFrame::message(part.clone().into_bytes(), opcode, i == last);
            ws.send(Message::Frame(frame)).await.unwrap();
        }
    } else if let Some(text) = &case.after_close {
        // A raw close frame (so the client library lets us keep sending),
        // then a request the gateway must not act on.
        let close = WsFrame::close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }));
        ws.send(Message::Frame(close)).await.unwrap();
        let _ = ws.send(Message::text(text.clone())).await;
    } else {
        panic!("case {} sends nothing", case.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_malformed_frame_gets_its_answer_and_the_gateway_keeps_serving() {
    let cases: Vec<Case> =
        serde_json::from_str(include_str!("cases/malformed_frames.json")).expect("cases parse");
    assert!(cases.len() >= 50);
    let mut gw = TestGateway::start(&[]);
    let token = gw.token();
    // The bystander: connected throughout, answered after every case.
    let mut bystander = open_operator(&gw, "cli", None, &["operator.read"]).await;
    let mut failures = Vec::new();
    for case in &cases {
        let mut ws = match case.phase.as_str() {
            "preauth" => RawClient::open(&gw.url()).await.ws,
            "connected" => {
                open_operator(&gw, "ui", Some("battery-admin"), &["operator.admin"])
                    .await
                    .ws
            }
            other => panic!("{}: unknown phase {other}", case.name),
        };
        send_case(&mut ws, case, token.expose()).await;
        let seen = observe(&mut ws, case.close.is_some()).await;
        let response = seen.response.as_ref();
        let mut problems = Vec::new();
        if let Some(code) = &case.error {
            match response {
                Some(r) if r["ok"] == false && r["error"]["code"] == code.as_str() => {}
                other => problems.push(format!("expected error {code}, got {other:?}")),
            }
        }
        if case.ok && response.is_none_or(|r| r["ok"] != true) {
            problems.push(format!("expected ok, got {response:?}"));
        }
        if let Some(id) = &case.id {
            if response.is_none_or(|r| r["id"] != id.as_str()) {
                problems.push(format!("expected id {id:?}, got {response:?}"));
            }
        }
        if case.error.is_none() && !case.ok && response.is_some() {
            problems.push(format!("expected no response, got {response:?}"));
        }
        match (case.close, seen.close) {
            (Some(want), Some(got)) if want == got => {}
            (Some(want), got) => problems.push(format!("expected close {want}, got {got:?}")),
            (None, Some(got)) => problems.push(format!("unexpected close {got}")),
            (None, None) => {
                // Still open and usable.
                let ping = json!({"type": "req", "id": "after", "method": "health"});
                ws.send(Message::text(ping.to_string())).await.unwrap();
                let after = observe(&mut ws, false).await;
                if after.response.as_ref().is_none_or(|r| r["ok"] != true) {
                    problems.push(format!("connection unusable afterwards: {after:?}"));
                }
            }
        }
        // The gateway keeps serving the other client.
        if bystander.call("health", Value::Null).await.is_err() {
            problems.push("the bystander's health call failed".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        gw.proc.child.try_wait().unwrap().is_none(),
        "the gateway exited"
    );
}
