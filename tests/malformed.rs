//! The malformed-frame battery: every case of `tests/cases/malformed_frames.json`
//! is sent to the real gateway on a connection of its own (before or after
//! `connect`), and the answer, the close code and the close reason are
//! checked. After every case a healthy operator connection, open
//! throughout, must still get its `system-presence` answer.

mod common;

use std::time::{Duration, Instant};

use clawnode::protocol::Frame;
use common::raw_ws::{RawFrame, RawWs, Received};
use common::*;
use serde::Deserialize;
use serde_json::{json, Value};

const CASES: &str = include_str!("cases/malformed_frames.json");
/// The request sent after a case whose connection stays open.
const AFTER_ID: &str = "__after__";

#[derive(Debug, Deserialize)]
struct CaseFile {
    connect: Value,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    phase: Phase,
    send: Vec<Step>,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Preauth,
    Connected,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    text: Option<String>,
    pad_to: Option<usize>,
    #[serde(default)]
    repeat: Vec<(String, usize)>,
    connect: Option<ConnectPatch>,
    binary: Option<String>,
    #[serde(default)]
    binary_connect: bool,
    fragments: Option<usize>,
    #[serde(default)]
    ping_between: bool,
    frame: Option<FrameSpec>,
    close: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectPatch {
    #[serde(default)]
    set: serde_json::Map<String, Value>,
    #[serde(default)]
    set_raw: serde_json::Map<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameSpec {
    opcode: u8,
    #[serde(default = "yes")]
    fin: bool,
    #[serde(default)]
    rsv: u8,
    #[serde(default = "yes")]
    masked: bool,
    text: Option<String>,
    hex: Option<String>,
    declared_len: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    responses: Vec<ExpectedResponse>,
    close: Option<u16>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedResponse {
    id: String,
    ok: bool,
    code: Option<String>,
    message: Option<String>,
}

/// What came back for one case.
#[derive(Debug)]
struct Observed {
    /// `(id, ok, code, message)` of each response, in order.
    responses: Vec<(String, bool, Option<String>, String)>,
    /// The close frame (code `None`: none came, the reason says what
    /// happened), or `None` when the connection stayed open.
    close: Option<(Option<u16>, String)>,
}

/// Sets (or, with `None`, removes) a dotted path inside a JSON value.
fn patch(v: &mut Value, path: &str, new: Option<Value>) {
    let (parents, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut target = v;
    for key in parents.into_iter().flat_map(|p| p.split('.')) {
        target = &mut target[key];
    }
    let obj = target
        .as_object_mut()
        .unwrap_or_else(|| panic!("{path}: parent is not an object"));
    match new {
        Some(n) => obj.insert(last.to_string(), n),
        None => obj.remove(last),
    };
}

fn connect_text(template: &Value, token: &str, p: &ConnectPatch) -> String {
    let mut frame = template.clone();
    for (path, value) in &p.set {
        patch(&mut frame, path, Some(value.clone()));
    }
    let mut raws = Vec::new();
    for (i, (path, raw)) in p.set_raw.iter().enumerate() {
        let marker = format!("@RAW{i}@");
        patch(&mut frame, path, Some(Value::String(marker.clone())));
        raws.push((
            format!("\"{marker}\""),
            raw.as_str().expect("set_raw values are JSON text"),
        ));
    }
    for path in &p.remove {
        patch(&mut frame, path, None);
    }
    let mut text = frame.to_string().replace("@TOKEN@", token);
    for (marker, raw) in raws {
        text = text.replace(&marker, raw);
    }
    text
}

fn expand_text(step: &Step, text: &str) -> String {
    let mut out = text.to_string();
    for (i, (unit, count)) in step.repeat.iter().enumerate() {
        out = out.replace(&format!("@R{i}@"), &unit.repeat(*count));
    }
    if let Some(total) = step.pad_to {
        let fill = total + "@PAD@".len() - out.len();
        out = out.replace("@PAD@", &"x".repeat(fill));
        assert_eq!(out.len(), total, "pad_to");
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Sends one step; `false` once the server no longer takes data.
async fn send_step(ws: &mut RawWs, step: &Step, template: &Value, token: &str) -> bool {
    let connect = || connect_text(template, token, &ConnectPatch::default());
    if let Some(n) = step.fragments {
        let text = step.text.clone().unwrap_or_else(connect).into_bytes();
        let size = text.len().div_ceil(n);
        let parts: Vec<&[u8]> = text.chunks(size).collect();
        for (i, part) in parts.iter().enumerate() {
            let mut f = RawFrame::new(if i == 0 { 1 } else { 0 }, *part);
            f.fin = i + 1 == parts.len();
            if !ws.send(&f).await {
                return false;
            }
            if step.ping_between && !ws.send(&RawFrame::new(9, "between")).await {
                return false;
            }
        }
        return true;
    }
    if let Some(t) = &step.text {
        return ws.send_text(&expand_text(step, t)).await;
    }
    if let Some(p) = &step.connect {
        return ws.send_text(&connect_text(template, token, p)).await;
    }
    if let Some(b) = &step.binary {
        return ws.send(&RawFrame::new(2, b.as_bytes())).await;
    }
    if step.binary_connect {
        return ws.send(&RawFrame::new(2, connect())).await;
    }
    if let Some(spec) = &step.frame {
        let payload = match (&spec.text, &spec.hex) {
            (Some(t), None) => t.clone().into_bytes(),
            (None, Some(h)) => hex(h),
            (None, None) => Vec::new(),
            _ => panic!("frame: text or hex, not both"),
        };
        let f = RawFrame {
            fin: spec.fin,
            rsv: spec.rsv,
            opcode: spec.opcode,
            masked: spec.masked,
            payload,
            declared_len: spec.declared_len,
        };
        return ws.send(&f).await;
    }
    if let Some(code) = step.close {
        return ws.send(&RawFrame::new(8, code.to_be_bytes())).await;
    }
    panic!("empty step: {step:?}")
}

/// Reads responses until the close frame, or (connection open) the answer
/// to the follow-up request.
async fn observe(ws: &mut RawWs, case: &str) -> Observed {
    let mut responses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = ws.recv(left).await else {
            return Observed {
                responses,
                close: Some((None, "<no close and no answer within 10 s>".into())),
            };
        };
        match frame {
            Received::Text(t) => match Frame::parse(&t) {
                Ok(Frame::Res(r)) if r.id == AFTER_ID => {
                    assert!(r.ok, "{case}: follow-up health failed: {t}");
                    return Observed {
                        responses,
                        close: None,
                    };
                }
                Ok(Frame::Res(r)) => {
                    let (code, message) = match &r.error {
                        Some(e) => (Some(e.code.as_str().to_string()), e.message.clone()),
                        None => (None, String::new()),
                    };
                    responses.push((r.id, r.ok, code, message));
                }
                Ok(_) => {} // challenge, presence, tick
                Err(e) => panic!("{case}: the gateway sent an unparseable frame ({e}): {t}"),
            },
            Received::Close(code, reason) => {
                // Complete the closing handshake, as a client should.
                let _ = ws
                    .send(&RawFrame::new(8, code.unwrap_or(1000).to_be_bytes()))
                    .await;
                return Observed {
                    responses,
                    close: Some((code, reason)),
                };
            }
            Received::Eof => {
                return Observed {
                    responses,
                    close: Some((None, "<dropped without a close frame>".into())),
                }
            }
            Received::Binary(_) => panic!("{case}: the gateway sent a binary frame"),
            Received::Ping(_) | Received::Pong(_) => {}
        }
    }
}

async fn run_case(gw: &TestGateway, template: &Value, token: &str, case: &Case) -> Observed {
    let mut ws = RawWs::connect(gw.addr).await;
    match ws.recv(Duration::from_secs(5)).await {
        Some(Received::Text(t)) if t.contains("connect.challenge") => {}
        other => panic!("{}: expected the challenge, got {other:?}", case.name),
    }
    if case.phase == Phase::Connected {
        let hello = connect_text(template, token, &ConnectPatch::default());
        assert!(ws.send_text(&hello).await);
        loop {
            match ws.recv(Duration::from_secs(5)).await {
                Some(Received::Text(t)) => {
                    if let Ok(Frame::Res(r)) = Frame::parse(&t) {
                        assert!(r.ok && r.id == "c1", "{}: connect failed: {t}", case.name);
                        break;
                    }
                }
                other => panic!("{}: connect: {other:?}", case.name),
            }
        }
    }
    for step in &case.send {
        if !send_step(&mut ws, step, template, token).await {
            break; // the gateway closed; what it sent is still to be read
        }
    }
    if case.expect.close.is_none() {
        let after = json!({"type": "req", "id": AFTER_ID, "method": "health"}).to_string();
        assert!(
            ws.send_text(&after).await,
            "{}: follow-up not sent",
            case.name
        );
    }
    observe(&mut ws, &case.name).await
}

fn check(case: &Case, seen: &Observed) -> Result<(), String> {
    let exp = &case.expect;
    if seen.responses.len() != exp.responses.len() {
        return Err(format!(
            "expected {} response(s), got {:?}",
            exp.responses.len(),
            seen.responses
        ));
    }
    for (want, (id, ok, code, message)) in exp.responses.iter().zip(&seen.responses) {
        if &want.id != id || want.ok != *ok || want.code != *code {
            return Err(format!(
                "expected {want:?}, got {:?}",
                (id, ok, code, message)
            ));
        }
        if let Some(m) = &want.message {
            if !message.contains(m.as_str()) {
                return Err(format!("message {message:?} lacks {m:?}"));
            }
        }
    }
    match (&exp.close, &seen.close) {
        (None, None) => {}
        (Some(want), Some((code, reason))) => {
            if Some(*want) != *code {
                return Err(format!("expected close {want}, got {code:?} {reason:?}"));
            }
            if let Some(r) = &exp.reason {
                if !reason.contains(r.as_str()) {
                    return Err(format!("close reason {reason:?} lacks {r:?}"));
                }
            }
        }
        (want, got) => return Err(format!("expected close {want:?}, got {got:?}")),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_battery() {
    let file: CaseFile = serde_json::from_str(CASES).expect("tests/cases/malformed_frames.json");
    let mut names: Vec<&str> = file.cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), file.cases.len(), "case names must be unique");

    let mut gw = TestGateway::start(&[]);
    let token = gw.operator_token();
    let mut healthy = open_operator(&gw, "ui", Some("healthy-1"), &["operator.read"]).await;

    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &file.cases {
        let seen = run_case(&gw, &file.connect, token.expose(), case).await;
        if let Err(e) = check(case, &seen) {
            failures.push(format!("{}: {e}", case.name));
        }
        // The gateway serves the others throughout.
        let list = healthy
            .call("system-presence", json!({}))
            .await
            .unwrap_or_else(|e| panic!("after {}: system-presence: {e}", case.name));
        let rows = list.as_array().expect("presence list");
        assert!(
            rows.iter().any(|r| r["instanceId"] == "healthy-1"),
            "after {}: the healthy client's row is gone: {list}",
            case.name
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        file.cases.len(),
        failures.join("\n")
    );
    let log = gw.proc.log_text();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    assert!(
        gw.proc.child.try_wait().expect("gateway status").is_none(),
        "the gateway exited:\n{log}"
    );
    eprintln!(
        "{} malformed-frame cases in {:?}",
        file.cases.len(),
        started.elapsed()
    );
}
