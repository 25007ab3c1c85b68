//! The real OpenClaw peers (installed by `scripts/openclaw-peers.sh` into a
//! cache), each run with an isolated `HOME`/`OPENCLAW_STATE_DIR`, auto-update
//! off, on loopback only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use super::Proc;

/// How long one `openclaw` CLI run may take (Node.js and OpenClaw start
/// slowly on a loaded machine).
pub const OPENCLAW_CLI_WAIT: Duration = Duration::from_secs(120);

/// The peers' cache directory (installing them on first use).
pub fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openclaw-peers.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        // The first run downloads and installs about 330 npm packages.
        let out = super::output_within(
            cmd,
            Duration::from_secs(20 * 60),
            "scripts/openclaw-peers.sh",
        );
        assert!(
            out.status.success(),
            "scripts/openclaw-peers.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// `protocol.schema.json` from `@openclaw/gateway-protocol`.
pub fn schema_path() -> PathBuf {
    cache().join("protocol.schema.json")
}

/// An isolated OpenClaw home: `HOME` and `OPENCLAW_STATE_DIR` inside a temp dir.
pub struct OpenClawHome {
    pub dir: tempfile::TempDir,
    /// Run every command inside this network namespace.
    pub inside: Option<String>,
}

impl OpenClawHome {
    pub fn new() -> OpenClawHome {
        OpenClawHome {
            dir: tempfile::tempdir().unwrap(),
            inside: None,
        }
    }

    /// A home whose commands run inside the namespace `ns`.
    pub fn inside(ns: &super::netns::Netns) -> OpenClawHome {
        OpenClawHome {
            inside: Some(ns.name.clone()),
            ..OpenClawHome::new()
        }
    }

    /// `node openclaw.mjs ARGS` with this home's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cache().join("node"));
        cmd.arg(cache().join("openclaw.mjs"))
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("OPENCLAW_STATE_DIR", self.dir.path().join("state"))
            .env("OPENCLAW_NO_AUTO_UPDATE", "1")
            .env("NO_COLOR", "1")
            .env_remove("OPENCLAW_GATEWAY_TOKEN");
        match &self.inside {
            Some(ns) => {
                let mut wrapped = Command::new("ip");
                wrapped
                    .args(["netns", "exec", ns])
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                for (k, v) in cmd.get_envs() {
                    if let Some(v) = v {
                        wrapped.env(k, v);
                    } else {
                        wrapped.env_remove(k);
                    }
                }
                wrapped.current_dir(self.dir.path());
                wrapped
            }
            None => cmd,
        }
    }

    /// Runs `openclaw ARGS` to completion (within [`OPENCLAW_CLI_WAIT`]);
    /// panics with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = super::output_within(
            self.command(args),
            OPENCLAW_CLI_WAIT,
            &format!("openclaw {args:?}"),
        );
        assert!(
            out.status.success(),
            "openclaw {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `openclaw ARGS` (with `--json`) and parses its JSON output.
    pub fn run_json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        serde_json::from_str(json_part(&out))
            .unwrap_or_else(|e| panic!("openclaw {args:?}: {e}: {out}"))
    }

    /// `openclaw gateway call METHOD --url URL --token TOKEN --json [--params P]`.
    pub fn call(&self, url: &str, token: &str, method: &str, params: Option<&Value>) -> Value {
        let params = params.map(|p| p.to_string());
        let mut args = vec![
            "gateway", "call", method, "--url", url, "--token", token, "--json",
        ];
        if let Some(p) = &params {
            args.extend(["--params", p]);
        }
        self.run_json(&args)
    }
}

impl Default for OpenClawHome {
    fn default() -> Self {
        Self::new()
    }
}

/// The JSON document in a CLI's stdout (skipping any banner lines).
pub fn json_part(out: &str) -> &str {
    let start = out.find(['{', '[']).unwrap_or(0);
    &out[start..]
}

/// A free loopback port (bound and released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real OpenClaw gateway on loopback with token auth.
pub struct OpenClawGateway {
    pub proc: Proc,
    pub home: OpenClawHome,
    pub port: u16,
    pub token: String,
}

impl OpenClawGateway {
    pub fn start() -> OpenClawGateway {
        Self::start_on(OpenClawHome::new(), free_port(), "loopback")
    }

    /// Starts (or restarts, on the same home) a gateway on `port` with bind
    /// mode `bind`: `loopback`, or `lan` inside a namespace (all of the
    /// namespace's addresses: its loopback and its veth).
    pub fn start_on(home: OpenClawHome, port: u16, bind: &str) -> OpenClawGateway {
        let token = "interop-token".to_string();
        let port_s = port.to_string();
        let args = [
            "gateway",
            "run",
            "--allow-unconfigured",
            "--auth",
            "token",
            "--token",
            &token,
            "--port",
            &port_s,
            "--bind",
            bind,
        ];
        let proc = Proc::spawn_command(home.command(&args));
        proc.wait_for_log("[gateway] ready", Duration::from_secs(90));
        OpenClawGateway {
            proc,
            home,
            port,
            token,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn call(&self, method: &str, params: Option<&Value>) -> Value {
        self.home.call(&self.url(), &self.token, method, params)
    }

    /// Stops it and hands back its home, to restart on the same state.
    pub fn stop(mut self) -> OpenClawHome {
        self.proc.terminate();
        let OpenClawGateway { home, .. } = self;
        home
    }
}
