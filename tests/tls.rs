//! TLS end to end with the real binary on loopback: a gateway serving
//! `wss://` from a PEM pair (rcgen certificates), agents and the presence
//! CLI pinning its certificate or trusting it through a CA, and the
//! plaintext policy.

mod common;

use std::io::Read as _;
use std::time::{Duration, Instant};

use common::*;

fn row_for(host: &str) -> impl Fn(&[clawnode::protocol::PresenceEntry]) -> bool + '_ {
    move |l| {
        l.iter()
            .any(|e| e.host.as_deref() == Some(host) && e.reason.as_deref() == Some("periodic"))
    }
}

/// Runs the binary with extra environment (within [`CLI_WAIT`]): (exit
/// code, nothing, its stdout and stderr read to the end).
fn run_cli_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut p = Proc::spawn(args, envs);
    let code = p.wait_exit(CLI_WAIT);
    (code.unwrap_or(-1), String::new(), p.log_text())
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_agent_joins_a_tls_gateway_and_presence_works_over_wss() {
    let gw = TestGateway::start_tls(&[]);
    let cert = gw.tls.as_ref().unwrap();
    // The gateway says it serves TLS, with the fingerprint to pin.
    gw.proc
        .wait_for_log(&format!("certificate {}", cert.fingerprint), Duration::ZERO);

    let a = tempfile::tempdir().unwrap();
    // The pin is accepted with colons and in upper case, like OpenClaw's.
    let hex = cert
        .fingerprint
        .trim_start_matches("sha256:")
        .to_uppercase();
    let colons = hex
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let agent = gw.agent(
        a.path(),
        &["--display-name", "tls-node", "--tls-fingerprint", &colons],
    );
    gw.wait_presence("the pinned agent", row_for("tls-node"))
        .await;
    agent.wait_for_log(
        &format!("connected to wss://{}", gw.addr),
        Duration::from_secs(5),
    );

    // `clawnode presence` over wss:// with the pin.
    let (code, out, err) = gw.presence_cli(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|r| r.contains("tls-node") && r.contains("Active")),
        "{out}"
    );
    // Without a pin, the self-signed certificate is not trusted: one line.
    let url = gw.url();
    let tf = gw.operator_token_file();
    let (code, _, err) = run_cli_env(
        &[
            "presence",
            "--url",
            &url,
            "--token-file",
            tf.to_str().unwrap(),
        ],
        &[("SSL_CERT_FILE", unrelated_ca(a.path()).to_str().unwrap())],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("TLS certificate not trusted"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // On the gateway host, `presence` without --url reads the gateway's
    // config, uses wss:// and pins the gateway's own certificate.
    let cfg = a.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nenabled = true\nlisten = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            gw.addr,
            cert.cert.display(),
            cert.key.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run_cli(&[
        "presence",
        "--config",
        cfg.to_str().unwrap(),
        "--state-dir",
        gw.state_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tls-node"), "{out}");

    // check-config shows the TLS settings and the fingerprint to pin.
    let (code, out, err) = run_cli(&[
        "check-config",
        "--config",
        cfg.to_str().unwrap(),
        "--state-dir",
        gw.state_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("tls_cert = \"{}\"", cert.cert.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("tls_key = \"{}\"", cert.key.display())),
        "{out}"
    );
    assert!(out.contains(&cert.fingerprint), "{out}");
}

/// A CA certificate that signed nothing we serve, as the only system root
/// (so "not trusted" does not depend on the machine's bundle).
fn unrelated_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let (_, ca_pem) = TestCert::ca_signed(dir, "unrelated");
    let path = dir.join("unrelated-ca.pem");
    std::fs::write(&path, ca_pem).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_pin_is_refused_with_both_fingerprints_and_retried() {
    let gw = TestGateway::start_tls(&[]);
    let actual = gw.tls.as_ref().unwrap().fingerprint.clone();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let a = tempfile::tempdir().unwrap();
    let agent = gw.agent(
        a.path(),
        &["--display-name", "wrong-pin", "--tls-fingerprint", &wrong],
    );
    let line = agent.wait_for_log("TLS fingerprint mismatch", Duration::from_secs(10));
    assert!(
        line.contains(&format!("expected {wrong}"))
            && line.contains(&format!("presented {actual}")),
        "{line}"
    );
    // It keeps retrying (backoff starts at about a second) and never joins.
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.count_log("TLS fingerprint mismatch") < 2 {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agent.count_log("connected to"), 0, "{}", agent.log_text());
    let list = gw.presence().await;
    assert!(!list.iter().any(|e| e.host.as_deref() == Some("wrong-pin")));
}

#[tokio::test(flavor = "multi_thread")]
async fn unpinned_agent_refuses_a_self_signed_gateway_and_trusts_a_system_ca() {
    let tmp = tempfile::tempdir().unwrap();
    // Self-signed, no pin: refused as not trusted.
    let gw = TestGateway::start_tls(&[]);
    let ca = unrelated_ca(tmp.path());
    let a = tempfile::tempdir().unwrap();
    let url = gw.url();
    let tf = gw.token_file();
    let args = |state: &std::path::Path, name: &'static str, url: &str, tf: &std::path::Path| {
        vec![
            "run".to_string(),
            "--url".into(),
            url.to_string(),
            "--token-file".into(),
            tf.to_str().unwrap().into(),
            "--state-dir".into(),
            state.to_str().unwrap().into(),
            "--display-name".into(),
            name.into(),
        ]
    };
    let a_args = args(a.path(), "unpinned", &url, &tf);
    let a_args: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let agent = Proc::spawn(&a_args, &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    let line = agent.wait_for_log("TLS certificate not trusted", Duration::from_secs(10));
    assert!(line.contains("--tls-fingerprint"), "{line}");
    assert_eq!(agent.count_log("connected to"), 0);
    drop(agent);
    drop(gw);

    // A certificate issued by a CA in the system roots (SSL_CERT_FILE):
    // WebPKI validation passes without a pin, by IP and by name.
    let state = tempfile::tempdir().unwrap();
    let (cert, ca_pem) = TestCert::ca_signed(tmp.path(), "issued");
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let gw = TestGateway::start_at_with_cert(state.path(), cert, &[]);
    let by_name = format!("wss://localhost:{}", gw.addr.port());
    for (name, url) in [("by-ip", gw.url()), ("by-name", by_name)] {
        let dir = tempfile::tempdir().unwrap();
        let v = args(dir.path(), name, &url, &gw.token_file());
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        let agent = Proc::spawn(&v, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
        agent.wait_for_log("connected to wss://", Duration::from_secs(20));
        gw.wait_presence(name, row_for(name)).await;
    }
}

#[test]
fn plaintext_ws_to_a_public_address_is_refused_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let tf = tmp.path().join("token");
    std::fs::write(&tf, "t\n").unwrap();
    let tf = tf.to_str().unwrap();
    let state = tmp.path().to_str().unwrap();
    // TEST-NET-3: nothing is ever sent there; the refusal comes first.
    let url = "ws://203.0.113.1:18789";
    for args in [
        vec!["presence", "--url", url, "--token-file", tf],
        vec![
            "run",
            "--url",
            url,
            "--token-file",
            tf,
            "--state-dir",
            state,
        ],
        vec!["check-config", "--url", url, "--token-file", tf],
    ] {
        let started = Instant::now();
        let (code, out, err) = run_cli(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("refusing plaintext ws:// to 203.0.113.1")
                && err.contains("--allow-insecure-ws"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{args:?}");
    }
    // Explicitly allowed (flag, environment, config key): the configuration
    // is accepted (checked without connecting).
    let (code, out, err) = run_cli(&[
        "check-config",
        "--url",
        url,
        "--token-file",
        tf,
        "--allow-insecure-ws",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("allow_insecure_ws = true"), "{out}");
    let (code, _, err) = run_cli_env(
        &["check-config", "--url", url, "--token-file", tf],
        &[("CLAWNODE_ALLOW_INSECURE_WS", "1")],
    );
    assert_eq!(code, 0, "{err}");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, format!("url = \"{url}\"\nallow_insecure_ws = true\n")).unwrap();
    let (code, _, err) = run_cli(&[
        "check-config",
        "--config",
        cfg.to_str().unwrap(),
        "--token-file",
        tf,
    ]);
    assert_eq!(code, 0, "{err}");
    // Private and loopback addresses need no permission.
    for ok in ["ws://10.1.2.3:1", "ws://[fd00::1]:1", "ws://localhost:1"] {
        let (code, _, err) = run_cli(&["check-config", "--url", ok, "--token-file", tf]);
        assert_eq!(code, 0, "{ok}: {err}");
    }
}

#[test]
fn invalid_fingerprints_name_where_they_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let tf = tmp.path().join("token");
    std::fs::write(&tf, "t\n").unwrap();
    let tf = tf.to_str().unwrap();
    let url = "wss://127.0.0.1:1";
    let (code, _, err) = run_cli(&[
        "check-config",
        "--url",
        url,
        "--token-file",
        tf,
        "--tls-fingerprint",
        "sha256:abc",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid --tls-fingerprint \"sha256:abc\"") && err.contains("64 hex"),
        "{err}"
    );
    let (code, _, err) = run_cli_env(
        &["check-config", "--url", url, "--token-file", tf],
        &[("CLAWNODE_TLS_FINGERPRINT", "nope")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid CLAWNODE_TLS_FINGERPRINT \"nope\""),
        "{err}"
    );
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("url = \"{url}\"\ntls_fingerprint = \"12:34\"\n"),
    )
    .unwrap();
    let (code, _, err) = run_cli(&[
        "check-config",
        "--config",
        cfg.to_str().unwrap(),
        "--token-file",
        tf,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid tls_fingerprint \"12:34\""), "{err}");
    // A pin needs wss://.
    let (code, _, err) = run_cli(&[
        "check-config",
        "--url",
        "ws://127.0.0.1:1",
        "--token-file",
        tf,
        "--tls-fingerprint",
        &format!("sha256:{}", "0".repeat(64)),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("needs a wss:// gateway URL"), "{err}");
}

#[test]
fn a_gateway_with_a_bad_certificate_or_key_fails_at_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = TestCert::self_signed(tmp.path(), "good");
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = tmp.path().join("missing.pem");
    let state = tmp.path().join("state");
    let state = state.to_str().unwrap();
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for (cert, key, expect) in [
        (
            p(&missing),
            p(&good.key),
            format!("cannot read TLS certificate {}", p(&missing)),
        ),
        (
            p(&garbage),
            p(&good.key),
            format!("invalid TLS certificate {}", p(&garbage)),
        ),
        (
            p(&good.cert),
            p(&missing),
            format!("cannot read TLS key {}", p(&missing)),
        ),
        (
            p(&good.cert),
            p(&garbage),
            format!("invalid TLS key {}", p(&garbage)),
        ),
    ] {
        for cmd in ["run", "check-config"] {
            let (code, _, err) = run_cli(&[
                cmd,
                "--gateway",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                state,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ]);
            assert_eq!(code, 1, "{cmd} {cert} {key}: {err}");
            assert!(err.contains(&expect), "{expect}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    // Only one of the pair is an error too.
    let (code, _, err) = run_cli(&[
        "run",
        "--gateway",
        "--state-dir",
        state,
        "--tls-cert",
        &p(&good.cert),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("tls_key is not"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_sends_a_client_hello_is_dropped_at_the_handshake_timeout() {
    // The handshake deadline (10 s) covers the TLS handshake: a socket that
    // stays silent is closed then, and others are served meanwhile.
    let gw = TestGateway::start_tls(&[]);
    let mut silent = std::net::TcpStream::connect(gw.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    let list = gw.presence().await;
    assert!(!list.is_empty());
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        silent.read(&mut buf)
    });
    let read = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    // Closed (EOF or reset), without a byte from the server.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    if let Err(e) = &read {
        assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "read timed out");
    }
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(12),
        "{elapsed:?}"
    );
}
