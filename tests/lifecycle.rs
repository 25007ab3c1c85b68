//! Process lifecycle: signals, reconnects, the tick watchdog, and CLI errors.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn gateway_sigterm_broadcasts_shutdown_and_closes_with_1012() {
    let mut gw = TestGateway::start(&[]);
    let mut c = open_operator(&gw, "ui", Some("watcher"), &["operator.read"]).await;
    gw.proc.signal(libc::SIGTERM);
    let ev = c.next_event("shutdown").await.expect("shutdown event");
    assert_eq!(ev.payload["reason"], "gateway stopping");
    let close = c.read_close().await.expect("close frame");
    assert_eq!(close.code, CloseCode::Restart);
    let (code, took) = gw.proc.terminate();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_get_presence_events_when_the_list_changes() {
    let gw = TestGateway::start(&[]);
    let mut watcher = open_operator(&gw, "ui", Some("watcher"), &["operator.read"]).await;
    let _other = open_operator(&gw, "ui", Some("newcomer"), &["operator.read"]).await;
    wait_within("`presence` event listing the newcomer", RAW_WAIT, async {
        loop {
            let ev = watcher
                .next_event("presence")
                .await
                .expect("presence event");
            assert!(ev.seq.is_some());
            let list = ev.payload["presence"].as_array().unwrap().clone();
            if list.iter().any(|e| e["instanceId"] == "newcomer") {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reconnects_after_the_gateway_restarts() {
    let gw = TestGateway::start(&[]);
    let port = gw.addr.port();
    let a = tempfile::tempdir().unwrap();
    let agent = gw.agent(a.path(), &["--display-name", "phoenix"]);
    gw.wait_presence("agent", |l| {
        l.iter().any(|e| e.host.as_deref() == Some("phoenix"))
    })
    .await;
    let state = gw.state_dir.clone();
    let mut gw = gw;
    assert_eq!(gw.proc.terminate().0, Some(0));
    agent.wait_for_log("reconnecting in", Duration::from_secs(5));

    // Same state dir (same token) and port.
    let listen = format!("127.0.0.1:{port}");
    let _gw_first = gw;
    let gw = TestGateway::start_at(&state, &["--listen", &listen]);
    gw.wait_presence("agent back", |l| {
        l.iter().any(|e| e.host.as_deref() == Some("phoenix"))
    })
    .await;
    assert!(agent.count_log("connected to") >= 2, "{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_with_a_bad_token_logs_clearly_and_waits_instead_of_spinning() {
    let gw = TestGateway::start(&[]);
    let a = tempfile::tempdir().unwrap();
    let bad = a.path().join("bad.token");
    std::fs::write(&bad, "wrong-token\n").unwrap();
    let agent = spawn_agent(&gw.url(), &bad, &a.path().join("state"), &[]);
    agent.wait_for_log("rejected our token", Duration::from_secs(10));
    let line = agent.wait_for_log("reconnecting in", Duration::from_secs(5));
    assert!(line.contains("reconnecting in 30.0s"), "{line}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        agent.count_log("rejected our token"),
        1,
        "no tight loop: {}",
        agent.log_text()
    );
    assert!(
        !agent.log_text().contains("wrong-token"),
        "token leaked into logs"
    );
}

#[test]
fn bad_input_is_one_clear_line_and_a_nonzero_exit() {
    let one_line = |args: &[&str], needle: &str| {
        let (code, _, err) = run_cli(args);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().to_str().unwrap();
    one_line(&["run", "--no-such-flag"], "--no-such-flag");
    one_line(
        &["run", "--state-dir", sd, "--url", "http://x"],
        "expected ws://",
    );
    one_line(
        &[
            "run",
            "--state-dir",
            sd,
            "--token-file",
            "/nonexistent/token",
            "--url",
            "ws://127.0.0.1:9",
        ],
        "cannot read token file",
    );
    one_line(
        &[
            "presence",
            "--token-file",
            "/nonexistent/token",
            "--url",
            "ws://127.0.0.1:9",
        ],
        "cannot read token file",
    );
    one_line(
        &["run", "--gateway", "--state-dir", sd, "--listen", "nope"],
        "invalid listen address",
    );
    one_line(
        &[
            "run",
            "--gateway",
            "--state-dir",
            sd,
            "--listen",
            "0.0.0.0:0",
            "--auth",
            "none",
        ],
        "refusing",
    );
    // There is no way to pass a token value on the command line.
    one_line(&["run", "--token", "secret"], "--token");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(&[
        "run",
        "--gateway",
        "--state-dir",
        tmp.path().to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_corrupt_identity_stops_run_and_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sd = tmp.path().to_str().unwrap();
    let (code, out, _) = run_cli(&["identity", "--state-dir", sd, "--json"]);
    assert_eq!(code, 0);
    let before: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = tmp.path().join("device-key");
    std::fs::write(&key, "corrupted").unwrap();
    let (code, _, err) = run_cli(&["run", "--state-dir", sd, "--url", "ws://127.0.0.1:9"]);
    assert_ne!(code, 0);
    assert!(err.contains(key.to_str().unwrap()), "{err}");
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        "corrupted",
        "nothing stored is lost"
    );
    // The instance id survives untouched.
    let id = std::fs::read_to_string(tmp.path().join("instance-id")).unwrap();
    assert_eq!(id.trim(), before["instanceId"].as_str().unwrap());
}

#[test]
fn gateway_generates_its_token_once_and_never_logs_it() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(state.path(), &[]);
    let first = std::fs::read_to_string(gw.token_file()).unwrap();
    assert!(first.trim().len() >= 32);
    let log = gw.proc.log_text();
    assert!(log.contains("gateway.token"), "the path is logged: {log}");
    assert!(!log.contains(first.trim()), "token leaked: {log}");
    let mode = std::fs::metadata(gw.token_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(gw.proc.terminate().0, Some(0));

    // Restarting on the same state dir reuses the token.
    let gw = TestGateway::start_at(state.path(), &[]);
    assert_eq!(std::fs::read_to_string(gw.token_file()).unwrap(), first);
}

/// A scripted gateway for agent tests: challenge, hello-ok with the given
/// tick, then it only answers requests (OpenClaw's refusal of node beacons
/// when `refuse_beacons`), never sends ticks, and records what it saw.
struct FakeGateway {
    url: String,
    methods: Arc<Mutex<Vec<String>>>,
    accepts: Arc<AtomicUsize>,
}

impl FakeGateway {
    async fn start(tick_interval_ms: u64, refuse_beacons: bool) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let methods = Arc::new(Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let (seen, counter) = (methods.clone(), accepts.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                    let challenge = json!({"type":"event","event":"connect.challenge",
                        "payload":{"nonce":"n","ts":clawnode::clock::now_ms()}});
                    ws.send(Message::text(challenge.to_string())).await.unwrap();
                    while let Some(Ok(m)) = ws.next().await {
                        let Message::Text(t) = m else { continue };
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        let method = v["method"].as_str().unwrap_or("").to_string();
                        seen.lock().unwrap().push(method.clone());
                        let reply = match method.as_str() {
                            "connect" => json!({"type":"res","id":v["id"],"ok":true,"payload":{
                                "type":"hello-ok","protocol":4,"server":{"version":"fake","connId":"c"},
                                "features":{"methods":[],"events":[]},"snapshot":{},
                                "auth":{"role":"node","scopes":[]},
                                "policy":{"maxPayload":1000000,"maxBufferedBytes":1000000,
                                          "tickIntervalMs":tick_interval_ms}}}),
                            "system-event" if refuse_beacons => {
                                json!({"type":"res","id":v["id"],"ok":false,
                                "error":{"code":"INVALID_REQUEST","message":"unauthorized role: node"}})
                            }
                            _ => json!({"type":"res","id":v["id"],"ok":true,"payload":{"ok":true}}),
                        };
                        if ws.send(Message::text(reply.to_string())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeGateway {
            url,
            methods,
            accepts,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn count(&self, method: &str) -> usize {
        self.methods
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.as_str() == method)
            .count()
    }

    /// Starts an agent against it, with `config` as its config file.
    fn agent(&self, dir: &Path, config: &str) -> Proc {
        let tf = dir.join("token");
        write_token_file(&tf, "tok");
        let cfg = dir.join("clawnode.toml");
        std::fs::write(&cfg, config).unwrap();
        spawn_agent(
            &self.url,
            &tf,
            &dir.join("state"),
            &["--config", cfg.to_str().unwrap()],
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_reconnects_when_the_gateway_goes_silent() {
    // Ticks every second are promised and never sent.
    let gw = FakeGateway::start(1000, false).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let agent = gw.agent(dir.path(), "");
    agent.wait_for_log("tick timeout", Duration::from_secs(6));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.accepts() < 2 {
        assert!(
            Instant::now() < deadline,
            "agent did not reconnect: {}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_refuses_node_beacons_gets_one_and_no_more() {
    let gw = FakeGateway::start(30_000, true).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = gw.agent(
        dir.path(),
        "beacon_interval_secs = 1\nstats_interval_secs = 1\n",
    );
    agent.wait_for_log("does not accept presence beacons", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(gw.count("system-event"), 1);
    assert!(
        gw.count("node.event") >= 3,
        "stats keep flowing every second"
    );
    assert_eq!(gw.accepts(), 1, "no reconnects");
    assert_eq!(agent.count_log("does not accept presence beacons"), 1);
    assert_eq!(agent.count_log("WARN"), 0, "no noise: {}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_without_slowing_the_others() {
    // A 2 s write timeout (10 s by default) keeps the test short.
    let gw = TestGateway::start_with_config("[gateway]\nwrite_timeout_secs = 2\n");
    // The slow client connects as an operator (it gets presence events) and
    // then never reads again.
    let slow = open_operator(&gw, "ui", Some("slow"), &["operator.read"]).await;
    // The writer is an operator too, so it gets every broadcast, but it keeps
    // reading (its calls read past events to their answers).
    let mut writer = open_operator(&gw, "ui", Some("writer"), &["operator.admin"]).await;
    let big = "x".repeat(4096);
    // Each beacon changes the list (up to ~200 KiB). Presence events are
    // coalesced per client (the latest list, never a queue of them), so the
    // slow client is dropped when a send to it has waited the write timeout
    // ("write timed out"); a full event queue ("dropping slow client") also
    // counts.
    let dropped = |gw: &TestGateway| {
        gw.proc.count_log("dropping slow client") + gw.proc.count_log("write timed out")
    };
    let started = Instant::now();
    for i in 0..100_000 {
        writer
            .call(
                "system-event",
                json!({"text": big, "instanceId": format!("flood-{}", i % 50)}),
            )
            .await
            .unwrap();
        if dropped(&gw) > 0 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let waited = Instant::now();
    while dropped(&gw) == 0 && waited.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dropped(&gw) > 0,
        "never dropped; log:\n{}",
        gw.proc.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(90));
    // Only the slow client was dropped; the writer is still served.
    assert_eq!(dropped(&gw), 1, "log:\n{}", gw.proc.log_text());
    let list = writer.call("system-presence", json!({})).await.unwrap();
    assert!(list.as_array().unwrap().len() > 3);
    drop(slow);
}

#[test]
fn a_gateway_creates_its_state_dir_on_first_start() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("new/state");
    let gw = TestGateway::start_at(&state, &[]);
    assert!(gw.token_file().exists());
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
