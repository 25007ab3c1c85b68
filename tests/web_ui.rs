//! The Instances page in a real browser: Debian's chromium, headless, driven
//! by playwright-core (tests/web/instances.mjs). The gateway runs in a
//! network namespace (rule 8: clients arrive from a real address), two
//! agents and the browser reach it over a veth link.
//!
//! Needs root (namespaces), `chromium` and `npm ci --prefix tests/web`:
//! ignored by a plain `cargo test`; `.ci/run` provides all three and runs
//! it with `-- --ignored`, where a missing piece fails.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::netns::{self, Netns};
use common::*;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// A missing piece fails the test (it runs only when asked, see #[ignore]).
fn require_pieces(web: &Path) {
    netns::require_root("network namespaces");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing (apt-get install chromium; .ci/run does)"
    );
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "playwright-core is missing (npm ci --prefix tests/web; .ci/run does)"
    );
}

fn line(rx: &mpsc::Receiver<String>, within: Duration, log: &dyn Fn() -> String) -> Value {
    let l = rx.recv_timeout(within).unwrap_or_else(|_| {
        panic!(
            "no word from the browser script within {within:?}\n{}",
            log()
        )
    });
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root (network namespaces), chromium and playwright-core (npm ci --prefix tests/web): see README"]
async fn the_instances_page_shows_the_fleet_live_in_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    require_pieces(&web);
    let ns = Netns::create(6);
    let state = tempfile::tempdir().unwrap();
    let (gateway, addr) = netns::gateway_in(&ns, state.path(), &[]);
    let url = format!("ws://{addr}");
    let token_file = state.path().join("gateway.token");
    let token = clawnode::config::read_token_file(&token_file).unwrap();

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut agents: Vec<Proc> = ["web-1", "web-2"]
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| {
            // TEST-NET-2 is not a private range: plaintext needs the flag.
            let flags = ["--display-name", name, "--allow-insecure-ws"];
            spawn_agent(&url, &token_file, dir.path(), &flags)
        })
        .collect();
    // Their instance ids, as each logs it when it creates its identity.
    let ids: Vec<String> = agents
        .iter()
        .map(|a| {
            let l = a.wait_for_log("created a new identity", Duration::from_secs(20));
            l.split("instance_id=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap()
                .to_string()
        })
        .collect();

    let screenshot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("instances.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut node = Command::new("node")
        .arg(web.join("instances.mjs"))
        .current_dir(&web)
        .env("GATEWAY", format!("http://{addr}"))
        .env("TOKEN", token.expose())
        .env("AGENTS", ids.join(","))
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let (tx, rx) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let stderr = node.stderr.take().unwrap();
    let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let errors_w = errors.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            errors_w.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    let log = || {
        format!(
            "browser script stderr:\n{}\ngateway log:\n{}",
            errors.lock().unwrap(),
            gateway.log_text()
        )
    };

    let ready = line(&rx, Duration::from_secs(90), &log);
    assert_eq!(ready["step"], "ready", "{ready}");
    let rows = ready["rows"].as_array().unwrap();
    for id in &ids {
        let row = rows
            .iter()
            .find(|r| r["instance"] == id.as_str())
            .unwrap_or_else(|| panic!("no row for {id}: {ready}"));
        let cells: Vec<&str> = row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(cells[0], "Active", "{cells:?}");
        assert!(
            cells[1].starts_with("web-"),
            "host is the display name: {cells:?}"
        );
        let ip: std::net::IpAddr = cells[2].parse().unwrap_or_else(|_| panic!("{cells:?}"));
        assert!(
            !ip.is_loopback(),
            "an address the agent reported: {cells:?}"
        );
        assert_eq!(cells[3], "node", "{cells:?}");
        assert_eq!(cells[9], &id[..8], "short instance id: {cells:?}");
    }
    assert!(
        ready["counts"].as_str().unwrap().contains("Active 3"),
        "the gateway and two agents; the page does not count itself: {ready}"
    );
    let page_row = rows
        .iter()
        .find(|r| r["mode"] == "ui")
        .unwrap_or_else(|| panic!("the page's own row is listed: {ready}"));
    assert!(
        page_row["cells"][1].as_str().unwrap().contains("this page"),
        "{page_row}"
    );

    // Stop web-2: its row must change in the open page.
    let stopped = agents.pop().unwrap();
    drop(stopped);
    writeln!(node.stdin.as_mut().unwrap(), "stopped {}", ids[1]).unwrap();
    let done = line(&rx, Duration::from_secs(60), &log);
    assert_eq!(done["step"], "done", "{done}");
    let row = done["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == ids[1].as_str())
        .unwrap()
        .clone();
    assert_eq!(row["left"], true, "{row}");
    assert_eq!(
        row["status"], "Left",
        "a departed agent is never Active: {row}"
    );
    assert_eq!(row["cells"][0], "Left", "{row}");
    let counts = done["counts"].as_str().unwrap();
    assert!(
        counts.contains("Active 2") && counts.contains("Left 1"),
        "the departed agent is counted as Left: {counts}"
    );
    assert!(done["detail"].as_str().unwrap().contains("CPUs"), "{done}");
    assert!(done["detail"].as_str().unwrap().contains("web-1"), "{done}");
    let status = node.wait().unwrap();
    assert!(status.success(), "{}", log());

    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
    drop(agents);
    drop(gateway);
}
