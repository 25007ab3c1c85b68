//! Issue 15, finding 5: `clawnode presence` against a hostile gateway (a
//! MITM on `ws://`, or one that relays a node's fields as they came). Rows,
//! refusal messages and close reasons carrying OSC 52 (clipboard write),
//! clear-screen, title changes, 8-bit CSI (U+009B), BEL, bidi overrides and
//! forged line breaks must reach the terminal as visible text, never raw.

mod common;

use std::time::Duration;

use clawnode::safe_text::is_unsafe;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Clipboard write, clear screen + home, window title, 8-bit CSI, BEL, a
/// bidi override, a forged log line.
const OSC52: &str = "evil\x1b]52;c;SGVsbG8=\x07";
const CLEAR: &str = "\x1b[2J\x1b[H";
const TITLE: &str = "v1\x1b]0;pwned\x07";
const CSI8: &str = "\u{9b}31mred";
const BIDI: &str = "node\u{202e}gpj.exe";
const FORGED: &str = "x\n[INFO] forged line\r";

fn hostile_rows() -> Value {
    json!([{
        "instanceId": "\x1b[31mid-1",
        "host": OSC52,
        "ip": "10.0.0.1\x07",
        "version": TITLE,
        "platform": CLEAR,
        "modelIdentifier": CSI8,
        "mode": BIDI,
        "reason": "periodic",
        "text": FORGED,
        "ts": clawnode::clock::now_ms(),
    }])
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// hello-ok (the hostile rows in its snapshot), the rows again for
    /// `system-presence`; with `close_after_hello`, then a close whose
    /// reason is hostile.
    Serve { close_after_hello: bool },
    /// The connect is refused with a hostile message.
    Refuse,
}

/// A gateway that speaks just enough of the protocol; returns its URL.
async fn hostile_gateway(behaviour: Behaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let challenge = json!({"type":"event","event":"connect.challenge",
                    "payload":{"nonce":"n","ts":clawnode::clock::now_ms()}});
                if ws.send(Message::text(challenge.to_string())).await.is_err() {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    let Message::Text(t) = m else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        return;
                    };
                    let reply = match (v["method"].as_str(), behaviour) {
                        (Some("connect"), Behaviour::Refuse) => json!({
                            "type":"res","id":v["id"],"ok":false,
                            "error":{"code":"INVALID_REQUEST",
                                "message":format!("no{OSC52}{CLEAR}{FORGED}{CSI8}")}}),
                        (Some("connect"), _) => json!({
                            "type":"res","id":v["id"],"ok":true,"payload":{
                            "type":"hello-ok","protocol":4,
                            "server":{"version":"hostile","connId":"c"},
                            "features":{"methods":["system-presence"],"events":["presence"]},
                            "snapshot":{"presence":hostile_rows(),"health":{},
                                "stateVersion":{"presence":1,"health":1},"uptimeMs":1},
                            "auth":{"role":"operator","scopes":["operator.read"]},
                            "policy":{"maxPayload":1000000,"maxBufferedBytes":1000000,
                                "tickIntervalMs":30000}}}),
                        (Some("system-presence"), _) => json!({
                            "type":"res","id":v["id"],"ok":true,"payload":hostile_rows()}),
                        _ => json!({"type":"res","id":v["id"],"ok":true,"payload":{}}),
                    };
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                    if let (
                        Some("connect"),
                        Behaviour::Serve {
                            close_after_hello: true,
                        },
                    ) = (v["method"].as_str(), behaviour)
                    {
                        let frame = CloseFrame {
                            code: CloseCode::Again,
                            reason: format!("bye{CLEAR}{OSC52}").into(),
                        };
                        let _ = ws.close(Some(frame)).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Panics naming the first character that would drive a terminal (line
/// ends of the output itself are fine).
fn assert_inert(what: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        if let Some(c) = line.chars().find(|&c| is_unsafe(c)) {
            panic!("{what}: line {i} carries {c:?} raw: {line:?}\nall:\n{text}");
        }
    }
}

fn token_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("token");
    write_token_file(&path, "any-token-will-do");
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_hostile_gateway_s_rows_are_shown_not_obeyed() {
    let url = hostile_gateway(Behaviour::Serve {
        close_after_hello: false,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&dir);
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&["presence", "--url", &url, "--token-file", &token, "--wide"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_inert("table", &out);
    assert_inert("stderr", &err);
    // Shown, escaped, not dropped: an operator sees what was sent.
    for shown in [
        "evil\\u{1b}]52;c;SGVsbG8=\\u{7}",
        "\\u{9b}31mred",
        "node\\u{202e}gpj.exe",
    ] {
        assert!(out.contains(shown), "{shown:?} not in:\n{out}");
    }
    // Exactly the header and one row: the forged line break made no row.
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[tokio::test]
async fn a_hostile_refusal_message_is_escaped() {
    let url = hostile_gateway(Behaviour::Refuse).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&dir);
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&["presence", "--url", &url, "--token-file", &token])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert_inert("stderr", &err);
    assert!(err.contains("\\u{1b}]52;"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one error line, no forged one:\n{err}"
    );
}

#[tokio::test]
async fn watch_in_a_pipe_escapes_rows_and_close_reasons() {
    let url = hostile_gateway(Behaviour::Serve {
        close_after_hello: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(&dir);
    let watch = Proc::spawn(
        &["presence", "--watch", "--url", &url, "--token-file", &token],
        &[],
    );
    let within = Duration::from_secs(20);
    tokio::task::spawn_blocking({
        let log = watch.log.clone();
        move || {
            let deadline = std::time::Instant::now() + within;
            loop {
                let text = log.lock().unwrap().join("\n");
                if text.contains("evil\\u{1b}]52;") && text.contains("retrying") {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no escaped row and retry line from --watch within {within:?}:\n{text}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    })
    .await
    .unwrap();
    let text = watch.log_text();
    assert_inert("--watch output", &text);
    let retry = watch.wait_for_log("retrying", within);
    assert!(retry.contains("bye\\u{1b}[2J"), "{retry}");
}
