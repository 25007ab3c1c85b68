//! Network namespaces as test hosts: a namespace joined to ours by a veth
//! pair with a /30 of TEST-NET-2 (198.51.100.0/24): `.1` on our side and
//! `.2` inside for link 0, `.5`/`.6` for link 1, and so on. Names carry the
//! test process id; everything is removed on drop.

use std::process::Command;
use std::time::Duration;

/// Whether this process may create namespaces (root).
pub fn available() -> bool {
    rustix::process::geteuid().is_root()
}

/// For the tests marked `#[ignore = "needs root…"]`: they run only when
/// asked (`cargo test -- --ignored`, as `.ci/run` does as root), and then a
/// missing piece is a failure, never a silent pass.
pub fn require_root(what: &str) {
    assert!(
        available(),
        "this test needs root ({what}); run it as root: cargo test -- --ignored (see README, \"Tests that need root\")"
    );
}

/// The iptables binary, or a failure naming the package.
pub fn require_iptables() -> &'static str {
    iptables().unwrap_or_else(|| {
        panic!("iptables is not installed (apt-get install iptables; .ci/run does)")
    })
}

/// The iptables binary to cut a namespace's link with, if installed.
pub fn iptables() -> Option<&'static str> {
    ["iptables-legacy", "iptables"].into_iter().find(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

pub struct Netns {
    pub name: String,
    host_if: String,
    /// Our side of the link.
    pub host_addr: String,
    /// The namespace's side.
    pub ns_addr: String,
}

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = super::output_within(cmd, Duration::from_secs(10), &format!("ip {args:?}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Creates the namespace and link number `link` (0..64); tests that may
    /// run at the same time use different links.
    pub fn create(link: u8) -> Netns {
        assert!(link < 64);
        let id = std::process::id() % 100_000;
        let base = 4 * u32::from(link);
        let ns = Netns {
            name: format!("clawnode-{link}-{id}"),
            host_if: format!("cnh{link}-{id}"),
            host_addr: format!("198.51.100.{}", base + 1),
            ns_addr: format!("198.51.100.{}", base + 2),
        };
        let peer = format!("cnp{link}-{id}");
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
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_addr),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_addr),
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

/// A gateway inside `ns`, listening on its address (an ephemeral port), with
/// `state` as its state dir: the process and the address it listens on.
pub fn gateway_in(
    ns: &Netns,
    state: &std::path::Path,
    extra: &[&str],
) -> (super::Proc, std::net::SocketAddr) {
    gateway_in_at(ns, state, &format!("{}:0", ns.ns_addr), extra)
}

/// [`gateway_in`] on a given listen address (to restart on the same port).
pub fn gateway_in_at(
    ns: &Netns,
    state: &std::path::Path,
    listen: &str,
    extra: &[&str],
) -> (super::Proc, std::net::SocketAddr) {
    let mut args = vec![
        "netns",
        "exec",
        &ns.name,
        super::BIN,
        "run",
        "--gateway",
        "--listen",
        listen,
        "--state-dir",
        state.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let proc = super::Proc::spawn_cmd("ip", &args);
    let line = proc.wait_for_log("gateway listening", std::time::Duration::from_secs(20));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listen= in {line:?}"));
    (proc, addr)
}
