//! A network partition in the middle of a connection: the gateway runs in a
//! network namespace reached over a veth pair, and every packet on that
//! link is dropped (iptables in the namespace), so neither side sees a FIN
//! or a reset. The agent must notice within two tick intervals and
//! reconnect after the heal; the gateway must reap the half-open connection
//! and mark the row `reason: "disconnect"`.
//! Needs root and iptables: ignored by a plain `cargo test`; `.ci/run`
//! installs iptables and runs it with `-- --ignored`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::*;
use serde_json::Value;

const TICK_SECS: u64 = 2;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The presence list as seen from inside the namespace (over its loopback,
/// which the partition leaves alone).
fn presence_in(ns: &Netns, port: u16, token_file: &str) -> Vec<Value> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, BIN, "presence", "--json"])
        .args(["--url", &format!("ws://127.0.0.1:{port}")])
        .args(["--token-file", token_file])
        .env("CLAWNODE_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "presence: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn row_reason(list: &[Value], instance_id: &str) -> Option<String> {
    list.iter()
        .find(|e| e["instanceId"].as_str() == Some(instance_id))
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
}

fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
#[ignore = "needs root and iptables (network namespaces): see README"]
fn a_silent_partition_is_detected_by_both_sides_and_healed() {
    common::netns::require_root("network namespaces");
    let iptables = common::netns::require_iptables();
    let ns = Netns::create(5);
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let config = state.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[gateway]\ntick_interval_secs = {TICK_SECS}\n"),
    )
    .unwrap();
    let gw = Proc::spawn_cmd(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            BIN,
            "run",
            "--gateway",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
            "--state-dir",
            dir,
        ],
    );
    let line = gw.wait_for_log("gateway listening", Duration::from_secs(20));
    let port: u16 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen=0.0.0.0:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let token_file = state.path().join("gateway.token");
    let operator_file = state.path().join("operator.token");
    let tf = operator_file.to_str().unwrap();

    let agent_state = tempfile::tempdir().unwrap();
    let url = format!("ws://{}:{port}", ns.ns_addr);
    // TEST-NET-2 is not a private range: plaintext must be allowed explicitly.
    let agent = spawn_agent(
        &url,
        &token_file,
        agent_state.path(),
        &["--allow-insecure-ws"],
    );
    agent.wait_for_log("connected", Duration::from_secs(20));
    let id = std::fs::read_to_string(agent_state.path().join("instance-id"))
        .unwrap()
        .trim()
        .to_string();
    wait_until("the agent's row", Duration::from_secs(10), || {
        row_reason(&presence_in(&ns, port, tf), &id).is_some_and(|r| r != "disconnect")
    });

    // Partition: drop everything on the veth, both ways, inside the namespace.
    for chain in [
        ["-I", "INPUT", "!", "-i", "lo"],
        ["-I", "OUTPUT", "!", "-o", "lo"],
    ] {
        let mut args = vec!["netns", "exec", &ns.name, iptables];
        args.extend(chain);
        args.extend(["-j", "DROP"]);
        run("ip", &args);
    }
    let partitioned = Instant::now();

    // The agent: silent gateway detected within 2 x tickIntervalMs (plus
    // the time since the last frame it heard, at most one tick).
    let limit = Duration::from_secs(3 * TICK_SECS + 1);
    let agent_noticed = wait_until("the agent noticing", limit, || {
        agent.count_log("tick timeout") > 0
    });
    // The gateway: the half-open connection is reaped, the row kept as a
    // disconnect until its TTL.
    let gateway_reaped = wait_until("the gateway reaping", limit, || {
        gw.count_log("peer unreachable") > 0
    });
    let reason = row_reason(&presence_in(&ns, port, tf), &id);
    assert_eq!(reason.as_deref(), Some("disconnect"));
    eprintln!(
        "partition: agent noticed after {agent_noticed:?}, gateway reaped after {gateway_reaped:?} (tick {TICK_SECS}s)"
    );

    // Heal: the agent is back by itself.
    std::thread::sleep(Duration::from_secs(2));
    run("ip", &["netns", "exec", &ns.name, iptables, "-F"]);
    let healed = Instant::now();
    wait_until(
        "the agent back after the heal",
        Duration::from_secs(45),
        || row_reason(&presence_in(&ns, port, tf), &id).is_some_and(|r| r != "disconnect"),
    );
    eprintln!(
        "partition of {:?}; back {:?} after the heal",
        healed - partitioned,
        healed.elapsed()
    );
    drop(agent);
    drop(gw);
}
