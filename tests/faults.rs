//! Faults the system must survive, each with real processes: a gateway
//! killed and restarted, a long outage, an agent killed while it writes its
//! identity, a gateway killed while it writes its device registry, a
//! read-only or full state directory, a flood of sockets that
//! never speak, speak garbage or present a wrong token, and an operator
//! that never reads. (The network partition lives in `partition.rs`.)
//!
//! These tests check behaviour (who gets back in, what is refused, what is
//! kept), not speed: where a bound is stated it is the requirement's own
//! (agents back within 10 s; a legitimate client never kept out for more
//! than 1 s), far above what the operation needs on loopback.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's open-file limit (children inherit it).
fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn instance_ids(list: &[clawnode::protocol::PresenceEntry]) -> Vec<String> {
    list.iter()
        .filter(|e| e.mode.as_deref() == Some("node") && e.reason.as_deref() != Some("disconnect"))
        .filter_map(|e| e.instance_id.clone())
        .collect()
}

fn read_id(state: &Path) -> String {
    std::fs::read_to_string(state.join("instance-id"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_return_within_their_backoff_after_the_gateway_is_killed() {
    let gw_state = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(gw_state.path(), &[]);
    let listen = gw.addr.to_string();
    let states: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let agents: Vec<_> = states.iter().map(|s| gw.agent(s.path(), &[])).collect();
    let ids: Vec<String> = states
        .iter()
        .map(|s| read_id_when_ready(s.path()))
        .collect();
    gw.wait_presence("three agents", |l| {
        ids.iter().all(|id| instance_ids(l).contains(id))
    })
    .await;

    // SIGKILL: no shutdown event, no close frames.
    gw.proc.signal(libc::SIGKILL);
    let _ = gw.proc.child.wait();
    let outage = Duration::from_secs(3);
    tokio::time::sleep(outage).await;
    let attempts_during_outage: Vec<usize> = agents
        .iter()
        .map(|a| a.count_log("reconnecting in"))
        .collect();

    let restarted = Instant::now();
    let gw = TestGateway::start_at(gw_state.path(), &["--listen", &listen]);
    gw.wait_presence("all three agents back", |l| {
        ids.iter().all(|id| instance_ids(l).contains(id))
    })
    .await;
    let back_after = restarted.elapsed();
    eprintln!("after SIGKILL: attempts during the 3 s outage {attempts_during_outage:?}, all back {back_after:?} after the restart");
    assert!(
        back_after <= Duration::from_secs(10),
        "agents took {back_after:?} to return after a short outage"
    );
    // No agent spun: over a 3 s outage, exponential backoff from 1 s
    // allows a handful of attempts, not hundreds.
    for (n, agent) in attempts_during_outage.iter().zip(&agents) {
        assert!(
            (1..=6).contains(n),
            "{n} reconnect attempts in {outage:?}; log:\n{}",
            agent.log_text()
        );
    }
}

/// Waits for an agent to create its identity and returns the instance id.
fn read_id_when_ready(state: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.join("instance-id").exists() {
        assert!(Instant::now() < deadline, "agent created no identity");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(20));
    read_id(state)
}

/// The delays an agent announced (`reconnecting in 3.2s: ...`).
fn announced_delays(agent: &Proc) -> Vec<f64> {
    agent
        .log_text()
        .lines()
        .filter_map(|l| l.split("reconnecting in ").nth(1))
        .filter_map(|rest| rest.split('s').next())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The reconnect cap (`reconnect_max_secs`) and the outage length of the
/// long-outage test: 4 s and 12 s here, so the agent reaches its cap and
/// waits there several times in seconds; the documented long run uses the
/// production cap (`CLAWNODE_RECONNECT_MAX_SECS=30 CLAWNODE_OUTAGE_SECS=600`,
/// see docs/RELIABILITY.md).
fn outage_settings() -> (u64, Duration) {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    (
        env("CLAWNODE_RECONNECT_MAX_SECS", 4),
        Duration::from_secs(env("CLAWNODE_OUTAGE_SECS", 12)),
    )
}

/// A gateway that is gone for several capped intervals: the agent's delays
/// grow to its reconnect cap and never past it, it does not spin, its
/// memory stays flat, and it is back within one capped interval of the
/// gateway's return.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_outage_backs_off_to_the_cap_and_recovers_within_one_interval() {
    let (cap, outage) = outage_settings();
    let gw_state = tempfile::tempdir().unwrap();
    let mut gw = TestGateway::start_at(gw_state.path(), &[]);
    let listen = gw.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("agent.toml");
    std::fs::write(&config, format!("reconnect_max_secs = {cap}\n")).unwrap();
    let agent = gw.agent(state.path(), &["--config", config.to_str().unwrap()]);
    let id = read_id_when_ready(state.path());
    gw.wait_presence("the agent", |l| instance_ids(l).contains(&id))
        .await;
    let pid = agent.child.id();

    let _ = gw.proc.terminate();
    drop(gw);
    let started = Instant::now();
    let mut rss = vec![rss_kib(pid)];
    while started.elapsed() < outage {
        tokio::time::sleep(Duration::from_secs(1).max(outage / 15).min(outage)).await;
        rss.push(rss_kib(pid));
    }
    let delays = announced_delays(&agent);
    let restarted = Instant::now();
    let gw = TestGateway::start_at(gw_state.path(), &["--listen", &listen]);
    // A capped wait may have just begun: poll past the bound checked
    // below, so the assertion, not the poll, decides.
    gw.wait_presence_within("the agent back", Duration::from_secs(cap + 10), |l| {
        instance_ids(l).contains(&id)
    })
    .await;
    let back_after = restarted.elapsed();
    eprintln!(
        "outage {outage:?}, cap {cap} s: {} attempts, delays {delays:?}, back after {back_after:?}, RSS KiB {rss:?}",
        delays.len()
    );

    let cap_f = cap as f64;
    assert!(delays.iter().all(|d| *d <= cap_f), "{delays:?}");
    // Equal jitter: attempt n waits in [c/2, c], c = min(cap, 2^n s). Once
    // 2^n reaches the cap the agent waits cap/2 to cap.
    let at_cap = (cap_f.log2().ceil() as usize).max(1);
    for (n, d) in delays.iter().enumerate().skip(at_cap) {
        assert!(
            *d >= cap_f / 2.0 - 0.05,
            "attempt {n} waited only {d}s: {delays:?}"
        );
    }
    let bound = at_cap + 1 + (outage.as_secs_f64() / (cap_f / 2.0)) as usize;
    assert!(
        delays.len() <= bound,
        "{} attempts in {outage:?} (bound {bound}): {delays:?}",
        delays.len()
    );
    assert!(
        back_after <= Duration::from_secs(cap + 1),
        "back after {back_after:?}, more than one capped interval"
    );
    // Memory flat: the last sample within 1 MiB of the first.
    let (first, last) = (rss[0], *rss.last().unwrap());
    assert!(first > 0 && last > 0, "{rss:?}");
    assert!(
        last <= first + 1024,
        "agent RSS grew during the outage: {rss:?}"
    );
}

/// Kills the agent with SIGKILL at random points of its first start, over
/// and over: whatever is on disk afterwards is either nothing, or complete
/// files that the next start accepts, and an identity that existed is never
/// changed by a later start.
#[test]
fn killing_an_agent_while_it_writes_its_identity_never_damages_or_changes_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    let mut outcomes = [0usize; 3]; // nothing, key only, complete
    for round in 0..60u64 {
        let state = tmp.path().join(format!("s{round}"));
        let args = [
            "run",
            "--url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        let mut child = Command::new(BIN)
            .args(args)
            .env("CLAWNODE_CONFIG", "/dev/null")
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over the first few milliseconds of the process,
        // where the identity is created.
        let delay_us = (round * 7919) % 6000;
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let _ = child.wait();

        let key = state.join("device-key");
        let id = state.join("instance-id");
        let before = match (key.exists(), id.exists()) {
            (false, false) => {
                outcomes[0] += 1;
                None
            }
            (true, false) => {
                outcomes[1] += 1;
                None
            }
            (true, true) => {
                outcomes[2] += 1;
                Some((std::fs::read(&key).unwrap(), std::fs::read(&id).unwrap()))
            }
            (false, true) => panic!("round {round}: an instance id without its key"),
        };
        // The next start (here `identity`, which loads the same way)
        // accepts what is there and completes it.
        let (code, out, err) =
            run_cli(&["identity", "--json", "--state-dir", state.to_str().unwrap()]);
        assert_eq!(code, 0, "round {round}: {err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some((key_bytes, id_bytes)) = before {
            assert_eq!(std::fs::read(&key).unwrap(), key_bytes, "round {round}");
            assert_eq!(std::fs::read(&id).unwrap(), id_bytes, "round {round}");
            assert_eq!(
                shown["instanceId"].as_str().unwrap(),
                String::from_utf8(id_bytes).unwrap().trim()
            );
        }
        // Again after a kill during a start with a complete identity.
        let mut child = Command::new(BIN)
            .args(args)
            .env("CLAWNODE_CONFIG", "/dev/null")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let _ = child.wait();
        let (code, out2, err) =
            run_cli(&["identity", "--json", "--state-dir", state.to_str().unwrap()]);
        assert_eq!(code, 0, "round {round}: {err}");
        assert_eq!(out, out2, "round {round}: the identity changed");
    }
    eprintln!("kill outcomes (nothing, key only, complete): {outcomes:?}");
}

/// Runs `script` with `sh` in a private mount namespace (root only).
fn in_mount_ns(script: &str) -> Proc {
    Proc::spawn_cmd(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", script],
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (mount namespaces): see README"]
async fn a_read_only_or_full_state_dir_is_named_on_first_start_and_survived_later() {
    common::netns::require_root("mount namespaces");
    let gw = TestGateway::start(&[]);
    let tf = gw.token_file();
    let tf = tf.to_str().unwrap();
    let url = gw.url();

    // First start, read-only: one line naming the directory.
    let ro = tempfile::tempdir().unwrap();
    let ro_path = ro.path().to_str().unwrap();
    let proc = in_mount_ns(&format!(
        "mount --bind -o ro {ro_path} {ro_path} && exec {BIN} run --url {url} --token-file {tf} --state-dir {ro_path}/state"
    ));
    let line = proc.wait_for_log("error", Duration::from_secs(10));
    assert!(
        line.contains(&format!("{ro_path}/state")) && line.contains("Read-only file system"),
        "{line}"
    );

    // First start, full disk: names the file it could not write.
    let full = tempfile::tempdir().unwrap();
    let full_path = full.path().to_str().unwrap();
    let proc = in_mount_ns(&format!(
        "mount -t tmpfs -o size=64k tmpfs {full_path} && mkdir -m 700 {full_path}/state && \
         (dd if=/dev/zero of={full_path}/filler bs=4k 2>/dev/null; true) && \
         exec {BIN} run --url {url} --token-file {tf} --state-dir {full_path}/state"
    ));
    let line = proc.wait_for_log("error", Duration::from_secs(10));
    assert!(
        line.contains(&format!("{full_path}/state/")) && line.contains("No space left"),
        "{line}"
    );

    // With an identity already there, a read-only state dir is no reason
    // to stop: the agent connects with the identity it read.
    let existing = tempfile::tempdir().unwrap();
    let ex = existing.path().to_str().unwrap();
    let (code, out, err) = run_cli(&["identity", "--json", "--state-dir", ex]);
    assert_eq!(code, 0, "{err}");
    let id: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = id["instanceId"].as_str().unwrap().to_string();
    let agent = in_mount_ns(&format!(
        "mount --bind -o ro {ex} {ex} && exec {BIN} run --url {url} --token-file {tf} --state-dir {ex}"
    ));
    gw.wait_presence("the agent with a read-only state dir", |l| {
        instance_ids(l).contains(&id)
    })
    .await;
    assert!(!agent.log_text().contains("ERROR"), "{}", agent.log_text());

    // And on a full disk.
    let full2 = tempfile::tempdir().unwrap();
    let f2 = full2.path().to_str().unwrap();
    let agent = in_mount_ns(&format!(
        "mount -t tmpfs -o size=64k tmpfs {f2} && {BIN} identity --state-dir {f2}/state >/dev/null && \
         (dd if=/dev/zero of={f2}/filler bs=4k 2>/dev/null; true) && \
         exec {BIN} run --url {url} --token-file {tf} --state-dir {f2}/state"
    ));
    let line = agent.wait_for_log("agent starting", Duration::from_secs(10));
    let id2 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("instance_id="))
        .unwrap()
        .trim_matches('"')
        .to_string();
    gw.wait_presence("the agent on a full disk", |l| {
        instance_ids(l).contains(&id2)
    })
    .await;
}

/// A legitimate operator's handshake, timed.
async fn legit_handshake(gw: &TestGateway) -> Duration {
    let started = Instant::now();
    let c = open_operator(gw, "cli", None, &["operator.read"]).await;
    let took = started.elapsed();
    drop(c);
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_of_silent_garbage_and_wrong_token_sockets_do_not_keep_real_clients_out() {
    raise_nofile();
    let gw = TestGateway::start(&[]);
    let addr = gw.addr;

    // 1,000 sockets that connect and never speak, from 127.0.0.2.
    let silent_since = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(connect_from("127.0.0.2", addr).await.unwrap());
    }
    // 1,000 that send garbage (and then nothing), from 127.0.0.3.
    let mut garbage = Vec::new();
    for i in 0..1000u32 {
        let mut s = connect_from("127.0.0.3", addr).await.unwrap();
        let junk: Vec<u8> = (0..200u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        let _ = s.write_all(&junk).await;
        garbage.push(s);
    }
    // The per-address cap (64 by default) holds: the rest got 503 at once.
    let refused = futures_util::future::join_all(silent.iter_mut().map(refused_with_503)).await;
    let mut held: Vec<TcpStream> = silent
        .into_iter()
        .zip(&refused)
        .filter(|(_, r)| !**r)
        .map(|(s, _)| s)
        .collect();
    assert!(held.len() <= 64, "{} silent sockets held", held.len());
    // The held ones are closed at the 10 s handshake timeout: watch them.
    let watcher = tokio::spawn(async move {
        let closes = futures_util::future::join_all(held.iter_mut().map(|s| async {
            let mut buf = [0u8; 64];
            loop {
                match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(silent_since.elapsed()),
                    Ok(Ok(_)) => continue,
                    Err(_) => return None,
                }
            }
        }))
        .await;
        closes
    });

    // 10,000 attempts with a wrong token, 32 at a time, from 127.0.0.4;
    // meanwhile real clients from 127.0.0.1 keep connecting.
    let wrong = clawnode::config::Secret::new("wrong-token");
    let flood = tokio::spawn(async move {
        let mut codes = std::collections::BTreeMap::<String, usize>::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10_000u32 {
            if tasks.len() >= 32 {
                if let Some(Ok(code)) = tasks.join_next().await {
                    *codes.entry(code).or_default() += 1;
                }
            }
            let wrong = wrong.clone();
            tasks.spawn(async move { token_attempt(addr, "127.0.0.4", &wrong, i).await });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(code) = r {
                *codes.entry(code).or_default() += 1;
            }
        }
        codes
    });
    let state = tempfile::tempdir().unwrap();
    let agent = gw.agent(state.path(), &[]);
    let mut worst = Duration::ZERO;
    let mut samples = 0;
    while !flood.is_finished() {
        worst = worst.max(legit_handshake(&gw).await);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let codes = flood.await.unwrap();
    eprintln!(
        "wrong-token flood outcomes: {codes:?}; worst legitimate handshake of {samples}: {worst:?}"
    );
    assert!(
        samples >= 3,
        "the flood ended too soon to measure ({samples} samples)"
    );
    assert!(
        worst <= Duration::from_secs(1),
        "a legitimate client waited {worst:?} during the flood"
    );
    // Every wrong-token attempt was refused for its token or rate limited.
    let total: usize = codes.values().sum();
    assert_eq!(total, 10_000, "{codes:?}");
    assert!(
        codes
            .keys()
            .all(|c| c == "AUTH_TOKEN_MISMATCH" || c == "AUTH_RATE_LIMITED"),
        "{codes:?}"
    );
    assert!(
        codes.get("AUTH_RATE_LIMITED").copied().unwrap_or(0) > 9_000,
        "{codes:?}"
    );
    // The agent (another address's budget) got in during all this.
    let id = read_id(state.path());
    gw.wait_presence("the agent during the flood", |l| {
        instance_ids(l).contains(&id)
    })
    .await;
    drop(agent);

    let closes = watcher.await.unwrap();
    eprintln!(
        "held silent sockets: {}, closed after {:?}",
        closes.len(),
        closes.iter().flatten().max()
    );
    for close in &closes {
        let at = close.expect("a held socket was never closed");
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(16)).contains(&at),
            "a silent socket was closed after {at:?}, not at the 10 s handshake timeout"
        );
    }
    // The garbage was refused: every one of those sockets is closed.
    for s in &mut garbage {
        let mut buf = [0u8; 512];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        assert!(closed, "a garbage socket is still open");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_total_pending_handshake_cap_refuses_with_503_and_frees_slots() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[gateway]\nmax_pending_handshakes = 10\n").unwrap();
    let gw = TestGateway::start_with_env(&[], &[("CLAWNODE_CONFIG", config.to_str().unwrap())]);
    let mut held = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..5 {
            held.push(connect_from(source, gw.addr).await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = connect_from("127.0.0.4", gw.addr).await.unwrap();
    assert!(
        refused_with_503(&mut extra).await,
        "the 11th pending handshake is refused"
    );
    gw.proc
        .wait_for_log("refusing connections (HTTP 503)", Duration::from_secs(5));
    // A slot is freed when a pending connection goes away.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = legit_handshake(&gw).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_that_never_reads_is_dropped_and_memory_stays_bounded() {
    // A 2 s write timeout (10 s by default): the test is about being
    // dropped and bounded, not about the default's length.
    let gw = TestGateway::start_with_config("[gateway]\nwrite_timeout_secs = 2\n");
    let pid = gw.proc.child.id();
    // The slow consumer: connected, subscribed to presence, never reads.
    let slow = open_operator(&gw, "ui", Some("slow-ui"), &["operator.read"]).await;
    let mut admin = open_operator(&gw, "ui", Some("admin-ui"), &["operator.admin"]).await;
    let before = rss_kib(pid);
    // Big presence lists, changed as fast as the admin can: every change is
    // an event queued for the slow consumer.
    let text = "x".repeat(900);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let key = format!("row-{}", sent % 150);
        admin
            .call(
                "system-event",
                json!({ "text": text, "instanceId": key, "host": key, "mode": "node" }),
            )
            .await
            .expect("the gateway keeps serving the admin");
        sent += 1;
        if gw.proc.count_log("slow client") + gw.proc.count_log("write timed out") > 0 {
            break;
        }
    }
    let after = rss_kib(pid);
    eprintln!(
        "slow consumer dropped after {sent} changes in {:?}; gateway RSS {before} -> {after} KiB",
        started.elapsed()
    );
    assert!(
        gw.proc.count_log("slow client") + gw.proc.count_log("write timed out") > 0,
        "the slow consumer was never dropped; log:\n{}",
        gw.proc.log_text()
    );
    // Presence events are coalesced per client (the latest list, never a
    // queue of them): the gateway did not buffer the stream for the reader.
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // The gateway closed the slow consumer itself: its row is marked
    // disconnected while this test still holds its socket. The admin is
    // still connected, and the list holds every row it wrote.
    let reason = |l: &[clawnode::protocol::PresenceEntry], id: &str| {
        l.iter()
            .find(|e| e.instance_id.as_deref() == Some(id))
            .map(|e| e.reason.clone().unwrap_or_default())
    };
    let list = gw
        .wait_presence("the slow consumer's row marked disconnected", |l| {
            reason(l, "slow-ui").as_deref() == Some("disconnect")
        })
        .await;
    assert!(
        reason(&list, "admin-ui").is_some_and(|r| r != "disconnect"),
        "the admin's row is live: {list:#?}"
    );
    let written: Vec<_> = list
        .iter()
        .filter(|e| {
            e.instance_id
                .as_deref()
                .is_some_and(|i| i.starts_with("row-"))
        })
        .collect();
    assert_eq!(written.len(), sent.min(150), "{list:#?}");
    assert!(written
        .iter()
        .all(|e| e.text.as_deref() == Some(text.as_str())));
    drop(slow);
}

/// A device as the registry must hold it: `None` when it has no record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fact {
    state: String,
    label: Option<String>,
    /// Its instance pins, sorted.
    pins: Vec<String>,
}

/// A `clawnode devices` change as it ended: whether it succeeded, when,
/// and its stderr.
type Answered = (Op, bool, Instant, String);

/// An operator's change, as `clawnode devices` makes it.
#[derive(Debug, Clone)]
enum Op {
    Approve(String),
    Revoke(String),
    Rename(String, String),
    Remove(String),
}

impl Op {
    fn device(&self) -> &str {
        match self {
            Op::Approve(d) | Op::Revoke(d) | Op::Remove(d) | Op::Rename(d, _) => d,
        }
    }

    fn args(&self) -> Vec<String> {
        let (action, rest) = match self {
            Op::Approve(d) => ("approve", vec![d.clone()]),
            Op::Revoke(d) => ("revoke", vec![d.clone()]),
            Op::Rename(d, label) => ("rename", vec![d.clone(), label.clone()]),
            Op::Remove(d) => ("remove", vec![d.clone()]),
        };
        let mut args = vec!["devices".to_string(), action.to_string()];
        args.extend(rest);
        args
    }

    /// The device's record after the change.
    fn apply(&self, before: Option<&Fact>) -> Option<Fact> {
        let mut fact = before.cloned().unwrap_or(Fact {
            state: "approved".into(),
            label: None,
            pins: Vec::new(),
        });
        match self {
            Op::Approve(_) => fact.state = "approved".into(),
            Op::Revoke(_) => fact.state = "revoked".into(),
            Op::Rename(_, label) => fact.label = Some(label.clone()),
            Op::Remove(_) => return None,
        }
        Some(fact)
    }
}

/// Every device's record as stored, read through a read-only connection
/// after `PRAGMA integrity_check` said `ok`.
fn registry_facts(state: &Path) -> std::collections::HashMap<String, Fact> {
    use rusqlite::OpenFlags;
    let path = state.join("registry.sqlite");
    let db = rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{} does not open: {e}", path.display()));
    let check: Vec<String> = db
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(check, ["ok"], "integrity_check of {}", path.display());
    let mut facts = std::collections::HashMap::new();
    let mut devices = db
        .prepare("SELECT device_id, state, label FROM devices")
        .unwrap();
    let rows = devices
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })
        .unwrap();
    for row in rows {
        let (id, state, label) = row.unwrap();
        let fact = Fact {
            state,
            label,
            pins: Vec::new(),
        };
        facts.insert(id, fact);
    }
    let mut pins = db
        .prepare("SELECT instance_id, device_id FROM instances ORDER BY instance_id")
        .unwrap();
    let rows = pins
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    for row in rows {
        let (instance, device) = row.unwrap();
        let fact = facts
            .get_mut(&device)
            .expect("a pin's device (foreign key)");
        fact.pins.push(instance);
    }
    facts
}

/// Every device's node token as stored (SHA-256, hex), read-only.
fn stored_node_tokens(state: &Path) -> std::collections::HashMap<String, String> {
    use rusqlite::OpenFlags;
    let path = state.join("registry.sqlite");
    let db = rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("{} does not open: {e}", path.display()));
    let mut rows = db
        .prepare(
            "SELECT device_id, token_sha256 FROM device_tokens
             WHERE role = 'node' AND token_sha256 IS NOT NULL",
        )
        .unwrap();
    let rows = rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn sha256_hex(token: &str) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A SIGKILL while the device registry is being written never corrupts it
/// and never loses what the gateway acknowledged. Each round starts the
/// gateway on the same state directory, sets off registry writes at once —
/// a burst of new devices approved on first use (each a device record and
/// an instance pin, stored before its `hello-ok`) and a run of `clawnode
/// devices` changes (approve, revoke, rename, remove; stored before the
/// command succeeds) — and kills the gateway at a point that moves from
/// round to round. Then the database must open read-only, pass `PRAGMA
/// integrity_check`, and hold every change acknowledged before the kill;
/// a change in flight may be there or not, but nothing else; and every
/// device token a new device's `hello-ok` carried (stored, as its SHA-256,
/// in the commit of its record and pin).
///
/// In two rounds of three the test holds the database's write lock (a
/// slow disk, as the gateway sees it) from the start of the writes —
/// until half-way to the kill, or past it — so writes queue up behind it
/// and the kill finds many in flight: a gateway that answered before its
/// commit would lose acknowledged devices there (checked by hand: such a
/// build fails this test; without the lock the window is microseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkill_during_registry_writes_never_corrupts_it_or_loses_an_acknowledged_change() {
    use clawnode::identity::DeviceIdentity;
    use common::node::{attempt_from, attempt_issued};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const ROUNDS: u64 = 24;
    const BURST: usize = 40;
    const PENDING: usize = 4;
    let started = Instant::now();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("test-config.toml");
    std::fs::write(
        &config,
        "[gateway]\nadmission = \"manual\"\nadmission_cidrs = [\"127.0.9.0/24\"]\n",
    )
    .unwrap();
    let conf = config.to_str().unwrap().to_string();
    // What the registry must hold: acknowledged facts, by device id.
    let mut known: HashMap<String, Option<Fact>> = HashMap::new();
    let (mut acknowledged, mut in_flight_total, mut in_flight_max) = (0usize, 0usize, 0usize);
    let mut cli_acknowledged = 0;
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    let mut in_flight_kills = 0;

    for round in 0..ROUNDS {
        let mut gw = TestGateway::start_at(state.path(), &["--config", &conf]);
        let token = gw.token();
        // Devices waiting for approval (in the gateway's memory only).
        let mut waiting = Vec::new();
        for _ in 0..PENDING {
            let id = DeviceIdentity::ephemeral("unused");
            let outcome = attempt_from(gw.addr, "127.0.0.1", &id, &token, None).await;
            assert_eq!(outcome, "PAIRING_REQUIRED", "round {round}");
            waiting.push(id.device_id().to_string());
        }
        // The operator's changes: approve the waiting ones, and change some
        // of the devices stored in earlier rounds.
        let mut stored: Vec<(&String, &Fact)> = known
            .iter()
            .filter_map(|(id, f)| Some((id, f.as_ref()?)))
            .collect();
        stored.sort_by_key(|(id, _)| *id);
        let changes = stored
            .iter()
            .skip(round as usize % 5)
            .step_by(5)
            .take(9)
            .enumerate()
            .map(|(n, (id, fact))| match (n as u64 + round) % 4 {
                0 | 2 => Op::Rename((*id).clone(), format!("round {round} · {n}")),
                1 if fact.state == "approved" => Op::Revoke((*id).clone()),
                1 => Op::Approve((*id).clone()),
                _ => Op::Remove((*id).clone()),
            });
        let mut approvals = waiting.iter().cloned().map(Op::Approve);
        let mut ops = Vec::new();
        for change in changes {
            ops.push(change);
            ops.extend(approvals.next());
        }
        ops.extend(approvals);

        // Go: the burst (staggered over ~250 ms) and the changes (one
        // after the other) at once; the kill lands somewhere among them.
        let begun = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let lock = match round % 3 {
            0 => None,
            hold => {
                let db = rusqlite::Connection::open(state.path().join("registry.sqlite")).unwrap();
                db.busy_timeout(Duration::from_secs(5)).unwrap();
                db.execute_batch("BEGIN IMMEDIATE").unwrap();
                Some((db, hold == 1))
            }
        };
        let mut burst = tokio::task::JoinSet::new();
        for n in 0..BURST {
            let (addr, token) = (gw.addr, token.clone());
            let (begun, ended) = (begun.clone(), ended.clone());
            burst.spawn(async move {
                tokio::time::sleep(Duration::from_millis(6 * n as u64)).await;
                let id = DeviceIdentity::ephemeral("unused");
                let instance = format!("kill-{round}-{n}");
                begun.fetch_add(1, Ordering::SeqCst);
                let source = format!("127.0.9.{}", 1 + n % 8);
                let (outcome, issued) =
                    attempt_issued(addr, &source, &id, &token, Some(&instance)).await;
                ended.fetch_add(1, Ordering::SeqCst);
                let accepted = outcome == "accepted";
                assert!(
                    !accepted || issued.is_some(),
                    "accepted without a device token"
                );
                (
                    id.device_id().to_string(),
                    instance,
                    issued.filter(|_| accepted),
                )
            });
        }
        let url = gw.url();
        let token_file = gw.operator_token_file();
        let answered: Arc<Mutex<Vec<Answered>>> = Arc::default();
        // Three operators at once, each going through its share in order
        // (one change per device a round, so the order per device holds).
        let mut cli = Vec::new();
        for share in 0..3 {
            let (begun, ended, answered) = (begun.clone(), ended.clone(), answered.clone());
            let ops: Vec<Op> = ops.iter().skip(share).step_by(3).cloned().collect();
            let (url, token_file) = (url.clone(), token_file.clone());
            cli.push(tokio::task::spawn_blocking(move || {
                for op in ops {
                    let mut args = op.args();
                    args.extend(["--url".into(), url.clone(), "--token-file".into()]);
                    args.push(token_file.to_str().unwrap().into());
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    begun.fetch_add(1, Ordering::SeqCst);
                    let (code, _, err) = run_cli(&args);
                    ended.fetch_add(1, Ordering::SeqCst);
                    answered
                        .lock()
                        .unwrap()
                        .push((op, code == 0, Instant::now(), err));
                    if code != 0 {
                        break;
                    }
                }
            }));
        }
        let delay = Duration::from_millis(20 + (round * 83) % 450);
        let lock = match lock {
            Some((db, true)) => {
                // Released half-way: the queued writes commit in one go.
                tokio::time::sleep(delay / 2).await;
                db.execute_batch("ROLLBACK").unwrap();
                tokio::time::sleep(delay / 2).await;
                None
            }
            held => {
                tokio::time::sleep(delay).await;
                held
            }
        };
        let in_flight = begun
            .load(Ordering::SeqCst)
            .saturating_sub(ended.load(Ordering::SeqCst));
        gw.proc.signal(libc::SIGKILL);
        let killed_at = Instant::now();
        gw.proc.wait_exit(RAW_WAIT);
        if let Some((db, _)) = lock {
            db.execute_batch("ROLLBACK").unwrap();
        }
        in_flight_total += in_flight;
        in_flight_max = in_flight_max.max(in_flight);
        in_flight_kills += usize::from(in_flight > 0);

        // What was acknowledged, and what may have been stored.
        let mut maybe: HashMap<String, Option<Fact>> = HashMap::new();
        let (mut acked_this_round, mut cli_acked) = (0, 0);
        // The device tokens this round's new devices were told about.
        let mut issued = Vec::new();
        while let Some(joined) = burst.join_next().await {
            let (device, instance, token) = joined.unwrap();
            let fact = Some(Fact {
                state: "approved".into(),
                label: None,
                pins: vec![instance],
            });
            if let Some(token) = token {
                issued.push((device.clone(), token));
                known.insert(device, fact);
                acked_this_round += 1;
            } else {
                maybe.insert(device, fact);
            }
        }
        for operator in cli {
            operator.await.unwrap();
        }
        for (op, ok, at, err) in answered.lock().unwrap().iter() {
            let device = op.device().to_string();
            let after = op.apply(known.get(&device).and_then(Option::as_ref));
            if *ok {
                known.insert(device, after);
                acked_this_round += 1;
                cli_acked += 1;
                *by_kind.entry(op.args()[1].clone()).or_default() += 1;
            } else {
                assert!(
                    *at >= killed_at,
                    "round {round}: {op:?} failed before the kill: {err}"
                );
                maybe.insert(device, after);
            }
        }
        acknowledged += acked_this_round;
        cli_acknowledged += cli_acked;

        // The database after the kill, before anything opens it again.
        let stored = registry_facts(state.path());
        let tokens = stored_node_tokens(state.path());
        for (device, token) in &issued {
            assert_eq!(
                tokens.get(device),
                Some(&sha256_hex(token)),
                "round {round} (killed {delay:?} in): the device token {device} was told about"
            );
        }
        for (device, expected) in known.iter_mut() {
            let found = stored.get(device).cloned();
            match maybe.remove(device) {
                Some(possible) if found == possible => *expected = found,
                _ => assert_eq!(
                    &found, expected,
                    "round {round} (killed {delay:?} in, {in_flight} in flight): device {device}"
                ),
            }
        }
        // A change in flight for a device not yet known: there or not.
        for (device, possible) in maybe {
            let found = stored.get(&device).cloned();
            assert!(
                found.is_none() || found == possible,
                "round {round}: device {device} is {found:?}, expected nothing or {possible:?}"
            );
            if found.is_some() {
                known.insert(device, found);
            }
        }
        // Nothing else: the devices stored are the known ones, and the
        // gateway's own.
        let others: Vec<&String> = stored.keys().filter(|d| !known.contains_key(*d)).collect();
        assert!(
            others.len() <= 1,
            "round {round}: unexpected devices {others:?}"
        );
        eprintln!(
            "round {round}: killed {delay:?} in, {in_flight} writes in flight, \
             {acked_this_round} acknowledged ({cli_acked} by the CLI), {} devices stored",
            stored.len()
        );
    }

    // The last kill survived too: the gateway starts and lists every device.
    let gw = TestGateway::start_at(state.path(), &["--config", &conf]);
    let (code, out, err) = gw.operator_cli(&["devices", "list"], &["--json"]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = ["paired", "refused"]
        .iter()
        .flat_map(|k| list[k].as_array().cloned().unwrap_or_default())
        .count();
    let expected = known.values().filter(|f| f.is_some()).count();
    // Plus the gateway's own device.
    assert!(
        listed >= expected,
        "{listed} listed, {expected} known: {list:#}"
    );
    eprintln!(
        "{ROUNDS} SIGKILLs in {:?}: {acknowledged} acknowledged writes kept \
         ({cli_acknowledged} by the CLI: {by_kind:?}); writes in flight at \
         the kill: {in_flight_total} in all, at most {in_flight_max}, in {in_flight_kills} of \
         {ROUNDS} rounds",
        started.elapsed()
    );
    assert!(
        in_flight_kills >= ROUNDS as usize / 2,
        "most kills must land while writes are in flight"
    );
}
