//! Smoke runs of the load generator (`clawnode-load`) against the real
//! gateway binary: 500 nodes held for 10 s with beacons, host stats and
//! `system-presence` calls, and a 150-node reconnect storm through a gateway
//! restart. They check counts and that nothing failed; the timings are
//! benchmarks (docs/PERFORMANCE.md), not assertions.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_clawnode-load");

/// Runs `clawnode-load` to completion; its exit code and JSON report.
fn run_load(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(LOAD)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run clawnode-load");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_nodes_for_ten_seconds_without_an_error() {
    let gw = TestGateway::start(&[]);
    let url = gw.url();
    let token = gw.token_file();
    let (code, report, stderr) = tokio::task::spawn_blocking(move || {
        run_load(&[
            "--url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--mode",
            "hold",
            "--nodes",
            "500",
            "--duration",
            "10",
            "--beacon-interval",
            "2",
            "--stats-interval",
            "2",
            "--presence-rate",
            "20",
            "--expect-zero-errors",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "report: {report}\nstderr:\n{stderr}");
    assert_eq!(report["peak_connected"], 500, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["handshakes_ok"].as_u64() >= Some(500), "{report}");
    // 500 nodes, one beacon and one stats report every 2 s for 10 s.
    assert!(report["beacons_sent"].as_u64() >= Some(1500), "{report}");
    assert!(report["stats_sent"].as_u64() >= Some(1500), "{report}");
    assert_eq!(report["beacons_failed"], 0, "{report}");
    assert_eq!(report["stats_failed"], 0, "{report}");
    assert!(
        report["presence_latency_us"]["n"].as_u64() >= Some(100),
        "{report}"
    );
    // Rule 7: 500 nodes, but the list holds 200 rows, the self entry included.
    assert_eq!(report["presence_rows"], 200, "{report}");
    let list = gw.presence().await;
    assert_eq!(list.len(), 200);
    assert_eq!(list[0].mode.as_deref(), Some("gateway"));
    // Every node's connection closed cleanly: the gateway logged no error.
    assert_eq!(gw.proc.count_log(" ERROR "), 0, "{}", gw.proc.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnect_storm_through_a_gateway_restart_brings_every_node_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(tmp.path(), &[]);
    let addr = gw.addr.to_string();
    let token = gw.token_file();
    let load = Proc::spawn_cmd(
        LOAD,
        &[
            "--url",
            &gw.url(),
            "--token-file",
            token.to_str().unwrap(),
            "--mode",
            "storm",
            "--nodes",
            "150",
            "--presence-rate",
            "0",
            "--storm-timeout",
            "90",
            "--report-every",
            "0.2",
            "--expect-zero-errors",
        ],
    );
    load.wait_for_log("connected 150 ", Duration::from_secs(60));
    // The cut: the gateway dies without a word, and is back 2 s later on
    // the same address and state.
    gw.proc.signal(libc::SIGKILL);
    let _ = gw.proc.child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let gw = TestGateway::start_at(tmp.path(), &["--listen", &addr]);
    let started = Instant::now();
    let mut load = load;
    let status = loop {
        if let Some(status) = load.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the storm did not end; log:\n{}",
            load.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = load.log_text();
    let report: Value = log
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report; log:\n{log}"));
    assert!(status.success(), "report: {report}\nlog:\n{log}");
    assert_eq!(report["storm"]["losses"], 150, "{report}");
    assert_eq!(report["storm"]["reconnects"], 150, "{report}");
    assert!(report["storm"]["all_back_s"].is_number(), "{report}");
    // While the gateway was down the nodes were refused (that is the
    // storm); nothing else failed.
    let errors = report["errors"].as_object().unwrap();
    for (kind, n) in errors {
        assert!(
            kind == "refused" || kind == "reset",
            "unexpected error {kind} x{n}: {report}"
        );
    }
    // Rule 7 again: the restarted gateway lists at most 200 rows.
    let list = gw.presence().await;
    assert_eq!(list.len(), 151, "150 nodes and the self entry");
}
