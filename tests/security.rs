//! Security properties with the real binary: tokens never reach logs or
//! argv; an instance id stays with the device key that first claimed it
//! until an operator forgets it; admin-only methods are admin-only.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The pin of `id` in the registry of a stopped gateway's state dir.
fn pin_in_registry(state: &std::path::Path, id: &str) -> Option<clawnode::gateway::registry::Pin> {
    use clawnode::gateway::registry::{DeviceRegistry as _, SqliteRegistry};
    let registry = SqliteRegistry::open(state).expect("the gateway's registry");
    registry
        .pin(&id.to_lowercase())
        .expect("a readable registry")
}

fn instance_id(state: &std::path::Path) -> String {
    std::fs::read_to_string(state.join("instance-id"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_appear_in_logs_argv_or_cli_output() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-3f9a1c77e2b54d0aa1c9e6b2-secret";
    let wrong = "wrong-77c1d2e3f4a5b6c7d8e9-secret";
    let tf = dir.path().join("token");
    let wf = dir.path().join("wrong");
    std::fs::write(&tf, format!("{token}\n")).unwrap();
    std::fs::write(&wf, format!("{wrong}\n")).unwrap();
    // Group/world readable: the gateway warns (naming the file, not the token).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o644)).unwrap();

    let gw_state = tempfile::tempdir().unwrap();
    let tf_s = tf.to_str().unwrap();
    let gw = TestGateway::start_with_env(&["--token-file", tf_s], &[("RUST_LOG", "trace")]);
    gw.proc.wait_for_log(
        "is accessible by other users (mode 644)",
        Duration::from_secs(5),
    );
    let url = gw.url();
    let a_state = tempfile::tempdir().unwrap();
    let b_state = tempfile::tempdir().unwrap();
    let trace = [("RUST_LOG", "trace")];
    let args = |state: &std::path::Path, file: &std::path::Path| {
        vec![
            "run".to_string(),
            "--url".into(),
            url.clone(),
            "--token-file".into(),
            file.to_str().unwrap().into(),
            "--state-dir".into(),
            state.to_str().unwrap().into(),
        ]
    };
    let a_args = args(a_state.path(), &tf);
    let b_args = args(b_state.path(), &wf);
    let good = Proc::spawn(
        &a_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &trace,
    );
    let bad = Proc::spawn(
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &trace,
    );
    good.wait_for_log("connected to", Duration::from_secs(20));
    bad.wait_for_log("AUTH_TOKEN_MISMATCH", Duration::from_secs(20));
    // An operator, with the operator token, through the CLI.
    let of = gw.operator_token_file();
    let of_s = of.to_str().unwrap();
    let (code, out, err) = run_cli(&["presence", "--url", &url, "--token-file", of_s]);
    assert_eq!(code, 0, "{err}");
    let (_, cfg_out, cfg_err) = run_cli(&[
        "check-config",
        "--gateway",
        "--token-file",
        tf_s,
        "--state-dir",
        gw_state.path().to_str().unwrap(),
    ]);

    for pid in [gw.proc.child.id(), good.child.id(), bad.child.id()] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        assert!(
            !cmdline.contains(token) && !cmdline.contains(wrong),
            "{cmdline}"
        );
    }
    let logs = [
        ("gateway", gw.proc.log_text()),
        ("agent", good.log_text()),
        ("agent with the wrong token", bad.log_text()),
        ("presence", format!("{out}{err}")),
        ("check-config", format!("{cfg_out}{cfg_err}")),
    ];
    for (who, log) in &logs {
        assert!(
            log.lines().count() > 3 || *who != "gateway",
            "{who} logged little: {log}"
        );
        let operator = gw.operator_token();
        for secret in [token, wrong, operator.expose()] {
            assert!(!log.contains(secret), "{who} output holds a token:\n{log}");
        }
    }
    // Trace level really was on (the check above is not vacuous).
    assert!(gw.proc.log_text().contains("TRACE") || gw.proc.log_text().contains("DEBUG"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_id_stays_with_its_first_key_until_forgotten() {
    let gw_state = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(gw_state.path(), &[]);
    let listen = gw.addr.to_string();

    // Host A: the first to claim its instance id.
    let a_state = tempfile::tempdir().unwrap();
    let mut a = gw.agent(a_state.path(), &[]);
    a.wait_for_log("connected to", Duration::from_secs(20));
    let id = instance_id(a_state.path());

    // Host B: a copy of A's instance id with its own key (a cloned image, or
    // a compromised host trying to take A's row).
    let b_state = tempfile::tempdir().unwrap();
    std::fs::copy(
        a_state.path().join("instance-id"),
        b_state.path().join("instance-id"),
    )
    .unwrap();
    // An instance id without its key is refused (never a silent new key):
    // give B its own key first, then the copied id.
    let (code, _, err) = run_cli(&["identity", "--state-dir", b_state.path().to_str().unwrap()]);
    assert_ne!(code, 0, "an id without a key must be refused");
    assert!(err.contains("device-key"), "{err}");
    std::fs::remove_file(b_state.path().join("instance-id")).unwrap();
    let (code, _, err) = run_cli(&["identity", "--state-dir", b_state.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    std::fs::copy(
        a_state.path().join("instance-id"),
        b_state.path().join("instance-id"),
    )
    .unwrap();

    let b = gw.agent(b_state.path(), &[]);
    let line = b.wait_for_log("INSTANCE_ID_PINNED", Duration::from_secs(20));
    assert!(line.contains("clawnode forget"), "{line}");
    // A's row is untouched: still A's, still connected.
    let list = gw.presence().await;
    let row = list
        .iter()
        .find(|e| e.instance_id.as_deref() == Some(id.as_str()))
        .expect("A's row");
    assert_ne!(row.reason.as_deref(), Some("disconnect"));
    drop(b);

    // The pin survives a gateway restart (it is in the state dir).
    let _ = gw.proc.terminate();
    let pin = pin_in_registry(gw_state.path(), &id);
    assert!(pin.is_some_and(|p| !p.device_id.is_empty()));
    gw = TestGateway::start_at(gw_state.path(), &["--listen", &listen]);
    let b = gw.agent(b_state.path(), &[]);
    b.wait_for_log("INSTANCE_ID_PINNED", Duration::from_secs(20));
    drop(b);

    // A read-only operator may not forget; the CLI (admin) may.
    let mut reader = open_operator(&gw, "cli", None, &["operator.read"]).await;
    let refused = reader
        .call("clawnode.instance.forget", json!({ "instanceId": id }))
        .await
        .unwrap_err();
    assert_eq!(refused.code.as_str(), "FORBIDDEN", "{refused:?}");

    // A is re-imaged: gone for good, and B (its new key) takes over once
    // an operator forgets the old pin.
    a.terminate();
    let tf = gw.operator_token_file();
    let (code, out, err) = run_cli(&[
        "forget",
        &id,
        "--url",
        &gw.url(),
        "--token-file",
        tf.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("forgot instance {id}")), "{out}");
    let b = gw.agent(b_state.path(), &[]);
    b.wait_for_log("connected to", Duration::from_secs(20));
    gw.wait_presence("B in A's old row", |l| {
        l.iter().any(|e| {
            e.instance_id.as_deref() == Some(id.as_str())
                && e.reason.as_deref() != Some("disconnect")
        })
    })
    .await;
    drop(b);

    // With the gateway stopped, forget edits the registry directly.
    let _ = gw.proc.terminate();
    let (code, out, err) = run_cli(&[
        "forget",
        &id,
        "--url",
        &format!("ws://{listen}"),
        "--token-file",
        tf.to_str().unwrap(),
        "--state-dir",
        gw_state.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not running"), "{err}");
    assert!(out.contains(&format!("forgot instance {id}")), "{out}");
    assert_eq!(pin_in_registry(gw_state.path(), &id), None);
}

/// Finding 9: wrong tokens from an address (here 127.0.0.1, the address of
/// every client on this host) rate-limit that address, but a device the
/// gateway has seen before proves itself with its signature and gets in;
/// clients that prove no known device stay limited.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_tokens_from_a_shared_address_do_not_lock_out_a_known_device() {
    let gw = TestGateway::start(&[]);
    // Agent A connects once: its device is known from then on.
    let a_state = tempfile::tempdir().unwrap();
    let mut a = gw.agent(a_state.path(), &[]);
    a.wait_for_log("connected to", Duration::from_secs(20));
    let id = instance_id(a_state.path());
    a.terminate();

    // Someone on the same address tries 25 wrong tokens: the first 20 are
    // mismatches, then the address is rate limited.
    let wrong = clawnode::config::Secret::new("wrong-token");
    let mut codes = Vec::new();
    for i in 0..25 {
        codes.push(token_attempt(gw.addr, "127.0.0.1", &wrong, i).await);
    }
    assert!(
        codes[..20].iter().all(|c| c == "AUTH_TOKEN_MISMATCH")
            && codes[20..].iter().all(|c| c == "AUTH_RATE_LIMITED"),
        "{codes:?}"
    );

    // A client without a device keeps the per-address limit, even with
    // the right token ...
    let right = gw.operator_token();
    assert_eq!(
        token_attempt(gw.addr, "127.0.0.1", &right, 99).await,
        "AUTH_RATE_LIMITED"
    );
    // ... and so does a device never seen before (agent B's fresh key).
    let b_state = tempfile::tempdir().unwrap();
    let b = gw.agent(b_state.path(), &[]);
    b.wait_for_log("rate limited by the gateway", Duration::from_secs(20));
    assert_eq!(b.count_log("connected to"), 0, "{}", b.log_text());
    drop(b);

    // Agent A, back, proves its known device and is let in at once.
    let back = std::time::Instant::now();
    let a = gw.agent(a_state.path(), &[]);
    a.wait_for_log(&format!("as {id}"), Duration::from_secs(20));
    eprintln!(
        "known agent back on the rate-limited address after {:?}",
        back.elapsed()
    );
    assert_eq!(a.count_log("rate limited"), 0, "{}", a.log_text());
    // (Presence is read over HTTP: an operator from 127.0.0.1 is limited.)
    let (_, _, metrics) = get(gw.addr, "/metrics");
    assert_eq!(
        series(&metrics, "clawnode_connections{role=\"node\"}"),
        1.0,
        "{metrics}"
    );
    // The address is still limited for everyone else.
    assert_eq!(
        token_attempt(gw.addr, "127.0.0.1", &right, 100).await,
        "AUTH_RATE_LIMITED"
    );
}
