//! The gateway's plain HTTP on its WebSocket port, against the real binary:
//! `/healthz`, `/readyz`, `/metrics` (counters moving as clients come,
//! fail and beacon; optionally behind the token), the Instances page, and
//! clear answers to what is neither.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_page_and_metrics_on_the_websocket_port() {
    let gw = TestGateway::start(&[]);
    let (status, head, body) = get(gw.addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(get(gw.addr, "/readyz").0, 200);

    let (status, head, page) = get(gw.addr, "/");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(
        head.contains("Content-Security-Policy: default-src 'none'"),
        "{head}"
    );
    assert!(page.contains("<title>"), "the page is served");
    assert!(!page.contains("{{"), "every placeholder is filled");

    // HEAD: same head, no body. Other methods and paths: clear answers.
    let (status, head, body) = http(gw.addr, "HEAD /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(head.contains("Content-Length: 3"), "{head}");
    let (status, head, _) = http(
        gw.addr,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, _, body) = get(gw.addr, "/nope");
    assert_eq!((status, body.as_str()), (404, "no page at /nope\n"));
    let (status, _, body) = http(
        gw.addr,
        "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(status, 400);
    assert!(body.contains("Sec-WebSocket-Version must be 13"), "{body}");
    let (status, _, _) = http(gw.addr, "\x16\x03\x01 not http\r\n\r\n");
    assert_eq!(status, 400);

    // Every series exists from the start, at zero.
    let (status, head, m) = get(gw.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(m.ends_with("# EOF\n"), "{m}");
    assert_eq!(series(&m, "clawnode_build_info{version=\"0.1.0\"}"), 1.0);
    assert_eq!(
        series(&m, "clawnode_presence_entries{status=\"active\"}"),
        1.0
    );
    assert_eq!(series(&m, "clawnode_handshakes_total{result=\"ok\"}"), 0.0);
    assert_eq!(
        series(
            &m,
            "clawnode_auth_failures_total{code=\"AUTH_TOKEN_MISMATCH\"}"
        ),
        0.0
    );
    assert_eq!(series(&m, "clawnode_beacons_total"), 0.0);
    assert_eq!(
        series(
            &m,
            "clawnode_connections_refused_total{reason=\"connection_limit\"}"
        ),
        0.0
    );
    let started = series(&m, "clawnode_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && now - started < 120.0,
        "{started} vs {now}"
    );

    // A node, an operator that beacons, and a wrong token.
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &[]);
    gw.wait_presence("the agent", |l| {
        l.iter().any(|e| e.mode.as_deref() == Some("node"))
    })
    .await;
    let mut op = open_operator(&gw, "ui", Some("ops-laptop"), &["operator.write"]).await;
    op.call("system-event", json!({"text": "beacon"}))
        .await
        .unwrap();
    let mut bad = RawClient::open(&gw.url()).await;
    let outcome = bad
        .connect(&operator_params(
            "ui",
            Some("x"),
            &[],
            Some(&clawnode::config::Secret::new("wrong")),
        ))
        .await;
    assert!(matches!(outcome, Outcome::Error(..)), "{outcome:?}");

    let m = get(gw.addr, "/metrics").2;
    assert_eq!(series(&m, "clawnode_connections{role=\"node\"}"), 1.0);
    assert_eq!(series(&m, "clawnode_connections{role=\"operator\"}"), 1.0);
    assert_eq!(
        series(&m, "clawnode_presence_entries{status=\"active\"}"),
        3.0
    );
    assert!(series(&m, "clawnode_handshakes_total{result=\"ok\"}") >= 2.0);
    assert_eq!(
        series(&m, "clawnode_handshakes_total{result=\"auth_failed\"}"),
        1.0
    );
    assert_eq!(
        series(
            &m,
            "clawnode_auth_failures_total{code=\"AUTH_TOKEN_MISMATCH\"}"
        ),
        1.0
    );
    assert!(series(&m, "clawnode_beacons_total") >= 1.0);
    drop(op);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_behind_the_token_and_readiness_at_the_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clawnode.toml");
    std::fs::write(
        &config,
        "[gateway]\nmax_connections = 2\nmetrics_require_token = true\n",
    )
    .unwrap();
    let gw = TestGateway::start(&["--config", config.to_str().unwrap()]);
    let token = gw.token().expose().to_string();

    let (status, head, body) = get(gw.addr, "/metrics");
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let wrong = http(
        gw.addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n",
    );
    assert_eq!(wrong.0, 401);
    let (status, _, m) = http(
        gw.addr,
        &format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    assert_eq!(status, 200);
    assert!(m.contains("clawnode_handshakes_total"), "{m}");
    // Health and the page stay open.
    assert_eq!(get(gw.addr, "/healthz").0, 200);
    assert_eq!(get(gw.addr, "/").0, 200);

    // One client connected and the probe's own slot: no room for another.
    assert_eq!(get(gw.addr, "/readyz").0, 200);
    let op = open_operator(&gw, "ui", Some("one"), &[]).await;
    let (status, _, body) = get(gw.addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no free connection slot"), "{body}");
    drop(op);
    let mut ready = false;
    for _ in 0..50 {
        if get(gw.addr, "/readyz").0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the client left");
}

#[test]
fn metrics_require_token_without_auth_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clawnode.toml");
    std::fs::write(
        &config,
        "[gateway]\nenabled = true\nauth = \"none\"\nlisten = \"127.0.0.1:0\"\nmetrics_require_token = true\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("metrics_require_token = true needs auth"),
        "{err}"
    );
}
