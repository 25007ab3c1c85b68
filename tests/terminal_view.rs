//! `clawnode presence` as a person sees it: run in tmux (a real terminal),
//! read back with `capture-pane`. The gateway runs in a network namespace
//! (rule 8); the live view must follow a node connecting and leaving, say
//! when the gateway goes away, and recover by itself when it returns.
//!
//! Needs root (namespaces), iptables and tmux: ignored by a plain `cargo
//! test`; `.ci/run` installs them and runs it with `-- --ignored`, where a
//! missing piece fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::netns::{self, Netns};
use common::*;

/// A tmux server of our own (its own socket) running one command.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, size: (u16, u16), env: &[(&str, &str)], cmd: &[&str]) -> Tmux {
        let tmux = Tmux {
            socket: format!("clawnode-{name}-{}", std::process::id()),
        };
        let mut c = Command::new("tmux");
        c.args(["-L", &tmux.socket, "-f", "/dev/null", "new-session", "-d"]);
        c.args(["-x", &size.0.to_string(), "-y", &size.1.to_string()]);
        for (k, v) in env {
            c.args(["-e", &format!("{k}={v}")]);
        }
        // Keep the pane (and what it shows) after the command exits.
        c.arg(format!("{} ; sleep 600", shell_words(cmd)));
        let out = c.output().expect("run tmux");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    /// The screen as text with wrapped lines joined (`capture-pane -J`): a
    /// line wider than the pane shows as one long line here.
    fn screen_joined(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-J"])
            .output()
            .expect("tmux capture-pane -J");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as text; with `escapes`, colours as escape sequences.
    fn screen(&self, escapes: bool) -> String {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "capture-pane", "-p"]);
        if escapes {
            c.arg("-e");
        }
        String::from_utf8_lossy(&c.output().expect("tmux capture-pane").stdout).into_owned()
    }

    fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen(false);
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("the screen never showed {what}; it shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn shell_words(cmd: &[&str]) -> String {
    cmd.iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A missing piece fails the test (it runs only when asked, see #[ignore]).
fn require_pieces() {
    netns::require_root("network namespaces");
    assert!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is missing (apt-get install tmux; .ci/run does)"
    );
}

/// Rows with long names, written as an operator would (a beacon for a row
/// nobody is connected as, and a `ui` client that connects and leaves):
/// the hosts written.
fn write_long_rows(url: &str, token_file: &std::path::Path) -> Vec<String> {
    let token = clawnode::config::Secret::new(std::fs::read_to_string(token_file).unwrap().trim());
    let hosts = vec![
        "web-0042.rack-17.eu-west-1.compute.internal".to_string(),
        "departed-db-7.rack-03.us-east-2.compute.internal".to_string(),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin = ["operator.admin", "operator.read", "operator.write"];
        let mut op = RawClient::open(url).await;
        match op
            .connect(&operator_params(
                "backend",
                Some("fit-admin"),
                &admin,
                Some(&token),
            ))
            .await
        {
            Outcome::Hello(_) => {}
            other => panic!("operator connect failed: {other:?}"),
        }
        op.call(
            "system-event",
            serde_json::json!({
                "text": "a host with long names",
                "instanceId": "fit-long-beacon-0123456789abcdef",
                "host": hosts[0],
                "ip": "192.168.100.123",
                "mode": "node",
                "version": "2026.11.30-beta.7",
                "platform": "linux 6.18.44-some-very-long-kernel-release-name",
                "modelIdentifier": "PowerEdge R760xd2 with a very long model name",
                "lastInputSeconds": 259200,
                "reason": "periodic",
            }),
        )
        .await
        .expect("system-event for another row (operator.admin)");
        let mut leaver = RawClient::open(url).await;
        let mut params = operator_params(
            "ui",
            Some("fit-departed-0123456789abcdef"),
            &["operator.read"],
            Some(&token),
        );
        params.client.display_name = Some(hosts[1].clone());
        params.client.platform = "linux 6.18.44-another-very-long-kernel-release".into();
        match leaver.connect(&params).await {
            Outcome::Hello(_) => {}
            other => panic!("ui connect failed: {other:?}"),
        }
        drop(leaver);
        drop(op);
    });
    hosts
}

/// The line of the screen that mentions `needle`.
fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
}

#[test]
#[ignore = "needs root (network namespaces), iptables and tmux: see README"]
fn the_live_table_follows_nodes_and_survives_a_gateway_restart() {
    require_pieces();
    let ns = Netns::create(7);
    let state = tempfile::tempdir().unwrap();
    // A 1 s tick: the watch calls a link dead after 3 silent ticks.
    let config = state.path().join("clawnode.toml");
    std::fs::write(&config, "[gateway]\ntick_interval_secs = 1\n").unwrap();
    let gw_flags = [
        "--display-name",
        "gw-7",
        "--config",
        config.to_str().unwrap(),
    ];
    let (gateway, addr) = netns::gateway_in(&ns, state.path(), &gw_flags);
    let url = format!("ws://{addr}");
    let token_file = state.path().join("gateway.token");
    let operator_file = state.path().join("operator.token");
    let tf = operator_file.to_str().unwrap();
    let watch = Tmux::start(
        "watch",
        (150, 20),
        &[("CLAWNODE_CONFIG", "/dev/null")],
        &[
            BIN,
            "presence",
            "--watch",
            "--url",
            &url,
            "--token-file",
            tf,
            "--allow-insecure-ws",
        ],
    );
    let screen = watch.wait_for("the gateway's row, live", Duration::from_secs(20), |s| {
        s.contains("  live  ") && s.contains("gw-7")
    });
    let header = screen.lines().next().unwrap();
    assert!(
        header.contains(&url) && header.contains("1 active · 0 idle · 0 stale · 0 left"),
        "{screen}"
    );
    let columns = line_with(&screen, "STATUS");
    for col in [
        "HOST",
        "IP",
        "MODE",
        "VERSION",
        "PLATFORM",
        "MODEL",
        "LAST INPUT",
        "UPDATED",
        "INSTANCE",
    ] {
        assert!(columns.contains(col), "{col} missing: {columns}");
    }
    let gw_row = line_with(&screen, "gw-7");
    assert!(gw_row.starts_with("● Active  gw-7"), "{gw_row}");
    assert!(
        gw_row.contains(&ns.ns_addr) && gw_row.contains("gateway"),
        "{gw_row}"
    );
    // Colour on a terminal: the dot is green.
    // (tmux re-encodes colours: the green is set somewhere before the dot.)
    let escaped = watch.screen(true);
    let row = line_with(&escaped, "gw-7");
    let dot = row.find('●').unwrap();
    assert!(row[..dot].contains("\x1b[32m"), "{row:?}");

    // A node connects: its row appears, below the gateway's.
    let agent_dir = tempfile::tempdir().unwrap();
    let flags = ["--display-name", "web-1", "--allow-insecure-ws"];
    let agent = spawn_agent(&url, &token_file, agent_dir.path(), &flags);
    let screen = watch.wait_for("web-1 connected", Duration::from_secs(20), |s| {
        s.contains("web-1")
    });
    let row = line_with(&screen, "web-1");
    assert!(
        row.starts_with("● Active  web-1") && row.contains("node"),
        "{row}"
    );
    assert!(row.contains("s ago") && !row.contains("left"), "{row}");
    let rows: Vec<&str> = screen
        .lines()
        .filter(|l| l.starts_with('●') || l.starts_with('○'))
        .collect();
    assert!(
        rows[0].contains("gw-7") && rows[1].contains("web-1"),
        "gateway first: {screen}"
    );
    assert!(
        screen.lines().next().unwrap().contains("2 active"),
        "{screen}"
    );

    // It leaves: the row stays (until the TTL) but says so.
    drop(agent);
    let screen = watch.wait_for("web-1 left", Duration::from_secs(20), |s| {
        s.lines()
            .any(|l| l.contains("web-1") && l.contains("left "))
    });
    assert!(
        line_with(&screen, "web-1").starts_with("○ Left    web-1"),
        "a departed client reads Left, not Active: {screen}"
    );
    assert!(
        screen
            .lines()
            .next()
            .unwrap()
            .contains("1 active · 0 idle · 0 stale · 1 left"),
        "the departed client is not counted as active: {screen}"
    );

    // A partition (no FIN either way): the silence gives it away.
    let iptables = netns::iptables().expect("iptables (apt-get install iptables; .ci/run does)");
    let ipt = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, iptables])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ipt(&["-I", "INPUT", "!", "-i", "lo", "-j", "DROP"]);
    ipt(&["-I", "OUTPUT", "!", "-o", "lo", "-j", "DROP"]);
    let screen = watch.wait_for("the partition noticed", Duration::from_secs(20), |s| {
        s.contains("connection lost, retrying")
    });
    assert!(
        screen.contains("no word from the gateway for 3s"),
        "{screen}"
    );
    ipt(&["-F"]);
    watch.wait_for(
        "live after the partition healed",
        Duration::from_secs(60),
        |s| s.contains("  live  "),
    );

    // The gateway goes away: the view says so and keeps the last list.
    let listen = addr.to_string();
    drop(gateway);
    let screen = watch.wait_for("connection lost", Duration::from_secs(20), |s| {
        s.contains("connection lost, retrying")
    });
    assert!(screen.contains("web-1"), "the last list stays: {screen}");

    // It comes back on the same address: the view recovers by itself.
    let (gateway, _) =
        netns::gateway_in_at(&ns, state.path(), &listen, &["--display-name", "gw-7"]);
    let screen = watch.wait_for("live again", Duration::from_secs(60), |s| {
        s.contains("  live  ") && !s.contains("web-1")
    });
    assert!(
        line_with(&screen, "gw-7").starts_with("● Active"),
        "{screen}"
    );
    drop(watch);

    let base = [
        "presence",
        "--url",
        &url,
        "--token-file",
        tf,
        "--allow-insecure-ws",
    ];
    // One-shot, in a terminal without colour (NO_COLOR): dots, no escapes.
    let once = Tmux::start(
        "once",
        (150, 10),
        &[("CLAWNODE_CONFIG", "/dev/null"), ("NO_COLOR", "1")],
        &[&[BIN][..], &base[..]].concat(),
    );
    once.wait_for("the table", Duration::from_secs(20), |s| s.contains("gw-7"));
    let colored = once.screen(true);
    assert!(
        colored.contains("● Active") && !colored.contains("\x1b[32m"),
        "{colored}"
    );
    drop(once);

    // Scripting: a pipe gets plain words; --filter and --status select;
    // --json stays the system-presence payload.
    let (code, out, err) = run_cli(&base);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().nth(1).unwrap().starts_with("Active  gw-7"),
        "{out}"
    );
    let (code, out, err) = run_cli(&[&base[..], &["--filter", "mode=node"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
    let (code, out, _) = run_cli(
        &[
            &base[..],
            &["--json", "--status", "active", "--filter", "host=GW-*"],
        ]
        .concat(),
    );
    assert_eq!(code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["mode"], "gateway");
    let (code, _, err) = run_cli(&[&base[..], &["--filter", "colour=red"]].concat());
    assert_eq!(code, 1);
    assert!(err.contains("unknown field \"colour\""), "{err}");

    // The table fits: long names and platforms, at 80, 100 and 120 columns,
    // one-shot and live, and no line wraps (a wrapped line shows as one
    // line longer than the pane in `capture-pane -J`).
    let long_rows = write_long_rows(&url, &operator_file);
    for width in [80u16, 100, 120] {
        for live in [false, true] {
            let mut cmd = vec![BIN];
            cmd.extend_from_slice(&base);
            if live {
                cmd.push("--watch");
            }
            let view = Tmux::start(
                &format!("fit{width}{live}"),
                (width, 30),
                &[("CLAWNODE_CONFIG", "/dev/null")],
                &cmd,
            );
            let screen = view.wait_for(
                &format!("the long rows at {width} columns"),
                Duration::from_secs(20),
                |s| {
                    s.contains("Left")
                        && long_rows.iter().filter(|h| s.contains(&h[..8])).count() == 2
                },
            );
            let joined = view.screen_joined();
            for line in joined.lines() {
                let visible = line.trim_end().chars().count();
                assert!(
                    visible <= width as usize,
                    "a line of {visible} characters wrapped at {width} columns (live: {live}):\n{joined}"
                );
            }
            let left = line_with(&screen, "Left");
            assert!(left.starts_with("○ Left"), "{width}: {screen}");
            assert!(!screen.contains("○ Active"), "{width}: {screen}");
            for col in ["STATUS", "HOST", "UPDATED"] {
                assert!(
                    line_with(&screen, "STATUS").contains(col),
                    "{width}: {screen}"
                );
            }
            drop(view);
        }
    }

    drop(gateway);
}
