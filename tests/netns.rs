//! Multi-host: the gateway runs in its own network namespace, reached over a
//! veth pair, so clients arrive from a real non-loopback address (rule 8).
//! Uses TEST-NET-2 (198.51.100.0/30) on links this test creates and removes.
//! Needs root (CI runs as root); elsewhere it says so and does nothing.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

struct Netns {
    name: String,
    host_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Namespace with `198.51.100.2/30` inside, `198.51.100.1/30` on our side.
    fn create() -> Netns {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("clawnode-t{id}"),
            host_if: format!("cnh{id}"),
        };
        let peer = format!("cnp{id}");
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&["addr", "add", "198.51.100.1/30", "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "198.51.100.2/30",
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns.name, "link", "set", &peer, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_address_fills_ip_and_a_reported_ip_wins() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns::create();
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().to_str().unwrap();
    let proc = Proc::spawn_cmd(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            BIN,
            "run",
            "--gateway",
            "--listen",
            "198.51.100.2:0",
            "--state-dir",
            dir,
        ],
    );
    let line = proc.wait_for_log("gateway listening", std::time::Duration::from_secs(20));
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .parse()
        .unwrap();
    let url = format!("ws://{addr}");
    let token = clawnode::config::read_token_file(&state.path().join("gateway.token")).unwrap();

    let connect = |iid: &'static str| {
        let url = url.clone();
        let token = token.clone();
        async move {
            let mut c = RawClient::open(&url).await;
            match c
                .connect(&operator_params(
                    "ui",
                    Some(iid),
                    &["operator.write"],
                    Some(&token),
                ))
                .await
            {
                Outcome::Hello(h) => (c, h),
                other => panic!("{other:?}"),
            }
        }
    };
    let (mut c, hello) = connect("far-host").await;
    let row = |list: &[clawnode::protocol::PresenceEntry]| {
        list.iter()
            .find(|e| e.instance_id.as_deref() == Some("far-host"))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        row(&hello.snapshot.presence).ip.as_deref(),
        Some("198.51.100.1"),
        "the remote address fills ip"
    );

    // A reported IP wins over the remote address...
    c.call(
        "system-event",
        json!({"text": "beacon", "ip": "203.0.113.7"}),
    )
    .await
    .unwrap();
    let list: Vec<clawnode::protocol::PresenceEntry> =
        serde_json::from_value(c.call("system-presence", json!({})).await.unwrap()).unwrap();
    assert_eq!(row(&list).ip.as_deref(), Some("203.0.113.7"));
    // ...and a beacon without one keeps it.
    c.call("system-event", json!({"text": "beacon 2"}))
        .await
        .unwrap();
    let list: Vec<clawnode::protocol::PresenceEntry> =
        serde_json::from_value(c.call("system-presence", json!({})).await.unwrap()).unwrap();
    assert_eq!(row(&list).ip.as_deref(), Some("203.0.113.7"));
    drop(c);
    drop(proc);
}
