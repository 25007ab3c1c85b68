//! Test harness: runs the real `clawnode` binary (gateway and agents) on
//! loopback, and a raw WebSocket client built on the crate's protocol types.

#![allow(dead_code)]

pub mod browser;
pub mod flood;
pub mod netns;
pub mod node;
pub mod openclaw;
pub mod raw_ws;

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clawnode::client::handshake::{self, HandshakeError};
use clawnode::config::Secret;
use clawnode::protocol::{
    ClientInfo, ConnectChallenge, ConnectParams, ErrorShape, Frame, HelloOk, PresenceEntry,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_clawnode");

/// A running `clawnode` process whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The threads reading its stdout and stderr into `log`.
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        scrub_env(&mut cmd);
        Self::spawn_with(cmd, args, envs)
    }

    /// Runs another program (e.g. `ip netns exec ... clawnode`).
    pub fn spawn_cmd(program: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        scrub_env(&mut cmd);
        Self::spawn_with(cmd, args, &[])
    }

    /// Runs a prepared command as it is (its environment untouched); stdout
    /// and stderr go to the same log.
    pub fn spawn_command(cmd: Command) -> Proc {
        Self::spawn_with(cmd, &[], &[])
    }

    fn spawn_with(mut cmd: Command, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn process under test");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let readers = vec![
            collect_lines(stdout, log.clone()),
            collect_lines(stderr, log.clone()),
        ];
        Proc {
            child,
            log,
            readers,
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line containing {needle:?} within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        let deadline = start + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within 10s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `within` for the process to exit by itself, then until
    /// everything it wrote is in the log (its reader threads joined);
    /// returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit by itself within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Its pipes close when it exits; reading what is left is quick.
        let drain = Duration::from_secs(5);
        let deadline = Instant::now() + drain;
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() {
                if Instant::now() > deadline {
                    panic!(
                        "the process exited but its output was not read to the end within {drain:?} \
                         (does a child of it hold the pipes?); log so far:\n{}",
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            reader.join().expect("log reader thread");
        }
        status.code()
    }
}

/// Appends each line read from `source` to `log`, in a thread of its own.
fn collect_lines(
    source: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines().map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    })
}

/// Runs `cmd` to completion (stdin empty, stdout and stderr collected, like
/// [`Command::output`]) for up to `within`; past that, kills it and panics
/// naming `what` it was running and what it had written.
pub fn output_within(mut cmd: Command, within: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + within;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            timed_out = true;
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Its pipes close when it exits; reading what is left is quick.
    let drain = Duration::from_secs(5);
    let drain_deadline = Instant::now() + drain;
    while !(stdout.is_finished() && stderr.is_finished()) {
        assert!(
            Instant::now() < drain_deadline,
            "{what} exited but its output was not read to the end within {drain:?} \
             (does a child of it hold the pipes?)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    if timed_out {
        panic!(
            "{what} did not finish within {within:?}; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate (and its key) for `localhost` and 127.0.0.1,
/// written as PEM files, made with rcgen.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `sha256:<hex>` of the certificate's DER, as agents pin it.
    pub fingerprint: String,
}

impl TestCert {
    pub fn self_signed(dir: &Path, name: &str) -> TestCert {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("generate certificate");
        Self::write(dir, name, &cert, &signing_key)
    }

    /// A CA (returned as PEM) and a server certificate for `localhost` and
    /// 127.0.0.1 that it issued.
    pub fn ca_signed(dir: &Path, name: &str) -> (TestCert, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "clawnode test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        (Self::write(dir, name, &cert, &key), ca_cert.pem())
    }

    fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> TestCert {
        use sha2::Digest;
        let cert_path = dir.join(format!("{name}.cert.pem"));
        let key_path = dir.join(format!("{name}.key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let digest = sha2::Sha256::digest(cert.der());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        TestCert {
            cert: cert_path,
            key: key_path,
            fingerprint: format!("sha256:{hex}"),
        }
    }
}

/// A gateway on an ephemeral loopback port with its own state dir.
pub struct TestGateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    /// The certificate it serves `wss://` with, if any.
    pub tls: Option<TestCert>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// A gateway serving `wss://` with a fresh self-signed certificate.
    pub fn start_tls(extra: &[&str]) -> TestGateway {
        let tmp = tempfile::tempdir().unwrap();
        let cert = TestCert::self_signed(tmp.path(), "gateway");
        let mut gw = Self::start_at_with_cert(tmp.path(), cert, extra);
        gw._tmp = Some(tmp);
        gw
    }

    /// A gateway serving `wss://` with `cert`, on a state dir the caller owns.
    pub fn start_at_with_cert(state_dir: &Path, cert: TestCert, extra: &[&str]) -> TestGateway {
        let (c, k) = (
            cert.cert.to_str().unwrap().to_string(),
            cert.key.to_str().unwrap().to_string(),
        );
        let mut args = vec!["--tls-cert", &c, "--tls-key", &k];
        args.extend_from_slice(extra);
        let mut gw = Self::start_at_with_env(state_dir, &args, &[]);
        gw.tls = Some(cert);
        gw
    }

    /// A gateway with a fresh temporary state dir.
    pub fn start(extra: &[&str]) -> TestGateway {
        let tmp = tempfile::tempdir().unwrap();
        let mut gw = Self::start_at(tmp.path(), extra);
        gw._tmp = Some(tmp);
        gw
    }

    /// A gateway with a fresh state dir and `toml` as its config file
    /// (e.g. `"[gateway]\nwrite_timeout_secs = 2\n"`: shorter timers).
    pub fn start_with_config(toml: &str) -> TestGateway {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("test-config.toml");
        std::fs::write(&config, toml).unwrap();
        let mut gw = Self::start_at(tmp.path(), &["--config", config.to_str().unwrap()]);
        gw._tmp = Some(tmp);
        gw
    }

    /// A gateway with a fresh state dir and extra environment (e.g. `RUST_LOG`).
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> TestGateway {
        let tmp = tempfile::tempdir().unwrap();
        let mut gw = Self::start_at_with_env(tmp.path(), extra, envs);
        gw._tmp = Some(tmp);
        gw
    }

    /// A gateway on a state dir the caller owns (to restart on it).
    pub fn start_at(state_dir: &Path, extra: &[&str]) -> TestGateway {
        Self::start_at_with_env(state_dir, extra, &[])
    }

    fn start_at_with_env(state_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> TestGateway {
        let dir = state_dir.to_str().unwrap().to_string();
        let mut args = vec!["run", "--gateway", "--state-dir", &dir];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let proc = Proc::spawn(&args, envs);
        let line = proc.wait_for_log("gateway listening", Duration::from_secs(20));
        // `listen=` in a text line, `"listen"` in a JSON one.
        let json: Option<Value> = serde_json::from_str(&line).ok();
        let addr = json
            .as_ref()
            .and_then(|v| v["listen"].as_str())
            .or_else(|| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen= in {line:?}"));
        TestGateway {
            proc,
            addr,
            state_dir: state_dir.to_path_buf(),
            tls: None,
            _tmp: None,
        }
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("wss://{}", self.addr),
            None => format!("ws://{}", self.addr),
        }
    }

    /// How our client reaches this gateway: pinned to its certificate.
    pub fn client_tls(&self) -> clawnode::tls::ClientTls {
        clawnode::tls::ClientTls {
            fingerprint: self
                .tls
                .as_ref()
                .map(|c| clawnode::tls::Fingerprint::parse(&c.fingerprint).unwrap()),
            allow_insecure_ws: false,
        }
    }

    pub fn token_file(&self) -> PathBuf {
        self.state_dir.join("gateway.token")
    }

    /// The fleet's join token (role node only): what agents hold.
    pub fn token(&self) -> Secret {
        Secret::new(std::fs::read_to_string(self.token_file()).unwrap().trim())
    }

    /// The operator credential the gateway generated (any role).
    pub fn operator_token_file(&self) -> PathBuf {
        self.state_dir.join("operator.token")
    }

    /// The operator token: what `presence`, `forget` and operator
    /// connections use.
    pub fn operator_token(&self) -> Secret {
        Secret::new(
            std::fs::read_to_string(self.operator_token_file())
                .unwrap()
                .trim(),
        )
    }

    /// Starts an agent against this gateway with its own state dir.
    pub fn agent(&self, state: &Path, extra: &[&str]) -> Proc {
        spawn_agent(&self.url(), &self.token_file(), state, extra)
    }

    /// Runs `clawnode presence` against this gateway (pinned to its
    /// certificate when it serves TLS).
    pub fn presence_cli(&self, extra: &[&str]) -> (i32, String, String) {
        self.operator_cli(&["presence"], extra)
    }

    /// Runs an operator command (`command`, e.g. `["devices", "list"]`)
    /// against this gateway, with its credential and certificate, then
    /// `extra`.
    pub fn operator_cli(&self, command: &[&str], extra: &[&str]) -> (i32, String, String) {
        let url = self.url();
        let tf = self.operator_token_file();
        let mut args = command.to_vec();
        args.extend(["--url", &url, "--token-file", tf.to_str().unwrap()]);
        if let Some(cert) = &self.tls {
            args.extend(["--tls-fingerprint", &cert.fingerprint]);
        }
        args.extend_from_slice(extra);
        run_cli(&args)
    }

    pub async fn presence(&self) -> Vec<PresenceEntry> {
        let v = clawnode::client::call(
            &self.url(),
            &self.client_tls(),
            Some(&self.operator_token()),
            "system-presence",
            Value::Null,
        )
        .await
        .expect("system-presence");
        serde_json::from_value(v).expect("presence list")
    }

    /// Polls presence until `pred` holds (for up to 20 s).
    pub async fn wait_presence(
        &self,
        what: &str,
        pred: impl Fn(&[PresenceEntry]) -> bool,
    ) -> Vec<PresenceEntry> {
        self.wait_presence_within(what, Duration::from_secs(20), pred)
            .await
    }

    /// Polls presence until `pred` holds, for up to `within`.
    pub async fn wait_presence_within(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[PresenceEntry]) -> bool,
    ) -> Vec<PresenceEntry> {
        let deadline = Instant::now() + within;
        loop {
            let list = self.presence().await;
            if pred(&list) {
                return list;
            }
            if Instant::now() > deadline {
                panic!(
                    "presence never showed {what}; last list: {list:#?}\ngateway log:\n{}",
                    self.proc.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writes a token file as it should be on a real host: mode 0600 (a
/// readable one is warned about).
pub fn write_token_file(path: &Path, token: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts `clawnode run` as an agent.
pub fn spawn_agent(url: &str, token_file: &Path, state: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "run",
        "--url",
        url,
        "--token-file",
        token_file.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args, &[])
}

pub use clawnode::client::handshake::Ws;

/// A protocol client for tests: the shared client handshake in its two
/// steps (so a test can build its `connect` from the challenge it got),
/// and raw frames for what a well-behaved client does not send.
pub struct RawClient {
    pub ws: Ws,
    pub challenge: ConnectChallenge,
    next_id: u64,
}

/// How a raw exchange ended.
#[derive(Debug)]
pub enum Outcome {
    Hello(Box<HelloOk>),
    Error(ErrorShape, Option<CloseFrame>),
    Closed(Option<CloseFrame>),
}

pub fn operator_params(
    mode: &str,
    instance_id: Option<&str>,
    scopes: &[&str],
    token: Option<&Secret>,
) -> ConnectParams {
    ConnectParams::operator(
        ClientInfo {
            id: "test".into(),
            display_name: Some(format!("test-{mode}")),
            version: "9.9.9".into(),
            platform: "linux".into(),
            device_family: None,
            model_identifier: None,
            mode: mode.into(),
            instance_id: instance_id.map(str::to_string),
        },
        scopes.iter().map(|s| s.to_string()).collect(),
        token.map(Secret::expose),
    )
}

/// How long a raw client waits for one thing it expects: the socket and
/// challenge, a response, an event, the close.
pub const RAW_WAIT: Duration = Duration::from_secs(10);

/// `fut`'s output if it is ready within `limit`; past that, panics saying
/// what was waited for ("no `presence` event within 10s").
pub async fn wait_within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("no {what} within {limit:?}"),
    }
}

impl RawClient {
    /// Opens the socket and reads the challenge (the first step of the
    /// shared client handshake), within [`RAW_WAIT`].
    pub async fn open(url: &str) -> RawClient {
        Self::open_with(url, None).await
    }

    /// [`RawClient::open`] through `connector` (a `wss://` gateway's pin).
    pub async fn open_with(
        url: &str,
        connector: Option<tokio_tungstenite::Connector>,
    ) -> RawClient {
        let what = format!("connection with a connect.challenge from {url}");
        wait_within(&what, RAW_WAIT, async {
            let mut ws = handshake::open(url, connector).await.expect("connect");
            let challenge = handshake::read_challenge(&mut ws, in_time())
                .await
                .expect("challenge");
            RawClient {
                ws,
                challenge,
                next_id: 0,
            }
        })
        .await
    }

    pub async fn send_text(&mut self, text: String) {
        wait_within(
            "room to send a frame",
            RAW_WAIT,
            self.ws.send(Message::text(text)),
        )
        .await
        .expect("send");
    }

    /// Sends `connect` (the second step of the shared client handshake)
    /// and returns how it ended.
    pub async fn connect(&mut self, params: &ConnectParams) -> Outcome {
        match handshake::send_connect(&mut self.ws, "c1", params, in_time()).await {
            Ok(payload) => match serde_json::from_value(payload.unwrap_or(Value::Null)) {
                Ok(h) => Outcome::Hello(Box::new(h)),
                Err(_) => Outcome::Closed(None),
            },
            Err(HandshakeError::Refused(e)) => {
                let close = self.read_close().await;
                Outcome::Error(e, close)
            }
            Err(HandshakeError::Closed(f)) => Outcome::Closed(f),
            Err(HandshakeError::Ws(_) | HandshakeError::Ended) => Outcome::Closed(None),
            Err(e) => panic!("connect: {e}"),
        }
    }

    /// Waits (within [`RAW_WAIT`]) for the response to `id` (skipping
    /// events), or the close.
    pub async fn await_response(&mut self, id: &str) -> Outcome {
        let ws = &mut self.ws;
        let what = format!("response to `{id}` (nor the close)");
        let answer = wait_within(&what, RAW_WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => match Frame::parse(&t).expect("frame") {
                        Frame::Res(r) if r.id == id => return Ok(r),
                        _ => continue,
                    },
                    Some(Ok(Message::Close(f))) => return Err(f),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Err(None),
                }
            }
        })
        .await;
        match answer {
            Ok(r) if r.ok => match serde_json::from_value(r.payload.unwrap_or(Value::Null)) {
                Ok(h) => Outcome::Hello(Box::new(h)),
                Err(_) => Outcome::Closed(None),
            },
            Ok(r) => {
                let close = self.read_close().await;
                Outcome::Error(r.error.expect("error"), close)
            }
            Err(close) => Outcome::Closed(close),
        }
    }

    /// Reads until the close frame (within [`RAW_WAIT`]).
    pub async fn read_close(&mut self) -> Option<CloseFrame> {
        wait_within("close frame (nor the end of the stream)", RAW_WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(f))) => return f,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        })
        .await
    }

    /// A request after connect; returns the response payload or error.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ErrorShape> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.send_text(Frame::request(id.clone(), method, params).to_text())
            .await;
        let what = format!("answer to `{method}`");
        wait_within(&what, RAW_WAIT, async {
            loop {
                match next_frame(&mut self.ws).await {
                    Some(Frame::Res(r)) if r.id == id => {
                        return match r.error.filter(|_| !r.ok) {
                            Some(e) => Err(e),
                            None => Ok(r.payload.unwrap_or(Value::Null)),
                        }
                    }
                    Some(_) => continue,
                    None => panic!("connection closed while waiting for {method}"),
                }
            }
        })
        .await
    }

    /// Waits (within [`RAW_WAIT`]) for an event by name; `None` when the
    /// connection closes first.
    pub async fn next_event(&mut self, name: &str) -> Option<clawnode::protocol::EventFrame> {
        let what = format!("`{name}` event");
        wait_within(&what, RAW_WAIT, async {
            loop {
                match next_frame(&mut self.ws).await {
                    Some(Frame::Event(e)) if e.event == name => return Some(e),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
    }
}

/// The deadline of one step of the handshake: 10 s from now.
fn in_time() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(10)
}

async fn next_frame(ws: &mut Ws) -> Option<Frame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Frame::parse(&t).ok(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// An operator connection that stays open (its own presence row).
pub async fn open_operator(
    gw: &TestGateway,
    mode: &str,
    instance_id: Option<&str>,
    scopes: &[&str],
) -> RawClient {
    let connector = clawnode::tls::client_connector(&gw.url(), &gw.client_tls())
        .expect("a connector for the gateway");
    let mut c = RawClient::open_with(&gw.url(), Some(connector)).await;
    match c
        .connect(&operator_params(
            mode,
            instance_id,
            scopes,
            Some(&gw.operator_token()),
        ))
        .await
    {
        Outcome::Hello(_) => c,
        other => panic!("operator connect failed: {other:?}"),
    }
}

/// Keeps the developer's own settings out of the processes under test.
fn scrub_env(cmd: &mut Command) {
    for var in [
        "CLAWNODE_TOKEN",
        "CLAWNODE_TOKEN_FILE",
        "CLAWNODE_OPERATOR_TOKEN_FILE",
        "OPENCLAW_GATEWAY_TOKEN",
        "CLAWNODE_URL",
        "CLAWNODE_STATE_DIR",
        "CLAWNODE_CONFIG",
        "CLAWNODE_LOG_FORMAT",
        "CLAWNODE_TLS_FINGERPRINT",
        "CLAWNODE_ALLOW_INSECURE_WS",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "STATE_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        cmd.env_remove(var);
    }
    // An empty config instead of an installed /etc/clawnode/clawnode.toml.
    cmd.env("CLAWNODE_CONFIG", "/dev/null");
}

/// How long a CLI run may take (its network calls time out after 10 s).
pub const CLI_WAIT: Duration = Duration::from_secs(30);

/// Runs the binary to completion (within [`CLI_WAIT`]): (exit code, stdout,
/// stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    scrub_env(&mut cmd);
    cmd.args(args);
    let out = output_within(cmd, CLI_WAIT, &format!("clawnode {args:?}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HTTP/1.1 request over a fresh socket: (status, headers, body).
///
/// With `max_connections = 2`, the previous request's slot can still be held
/// for a moment after its answer arrived; the listener then refuses with a
/// 503 written before it reads the request, and closing with the request
/// unread resets the socket. Such a reset is retried.
///
/// Each step (connect, send, every read) waits up to 10 s.
pub fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let step = Duration::from_secs(10);
    let what = request.lines().next().unwrap_or(request);
    let mut attempts = 0;
    let raw = loop {
        let mut s = std::net::TcpStream::connect_timeout(&addr, step)
            .unwrap_or_else(|e| panic!("{what:?}: no connection to {addr} within {step:?}: {e}"));
        s.set_read_timeout(Some(step)).unwrap();
        s.set_write_timeout(Some(step)).unwrap();
        let mut raw = Vec::new();
        let sent = std::io::Write::write_all(&mut s, request.as_bytes());
        match sent.and_then(|()| std::io::Read::read_to_end(&mut s, &mut raw)) {
            Ok(_) => break raw,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!(
                "{what:?} to {addr}: no complete answer ({e}; {attempts} resets retried, \
                 each read waits up to {step:?})"
            ),
        }
    };
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// `GET path` with the `Host` a client that dialled `addr` sends.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
}

/// The value of one series in an exposition (`name{labels}`), or panic.
pub fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in\n{metrics}"))
}

/// A TCP connection from `source` (a loopback address such as
/// `127.0.0.2`) to `addr`, so one test can play several client addresses.
pub async fn connect_from(
    source: &str,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("a source address"))?;
    socket.connect(addr).await
}

/// What the gateway did with a connection that never completes a
/// handshake: answered 503 at once (within 300 ms), or held it.
pub async fn refused_with_503(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"HTTP/1.1 503"),
        _ => false,
    }
}

/// One `connect` with `token` (an operator without a device) over a
/// connection from `source`: the detail code of the refusal it got
/// (`AUTH_TOKEN_MISMATCH`, `AUTH_RATE_LIMITED`, ...), or what happened
/// instead. A rate-limited answer without a sane `retryAfterMs` is
/// reported as such. Every step waits at most [`RAW_WAIT`].
pub async fn token_attempt(addr: SocketAddr, source: &str, token: &Secret, i: u32) -> String {
    let url = format!("ws://{addr}");
    let attempt = async {
        let Ok(stream) = connect_from(source, addr).await else {
            return "connect failed".to_string();
        };
        let (mut ws, _) = match tokio_tungstenite::client_async(url.as_str(), stream).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                return format!("HTTP {}", r.status().as_u16())
            }
            Err(e) => return format!("upgrade failed: {e}"),
        };
        let params = operator_params("cli", None, &["operator.read"], Some(token));
        let connect = Frame::request(format!("c{i}"), "connect", &params);
        let _ = ws.send(Message::text(connect.to_text())).await;
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(Frame::Res(res)) = Frame::parse(&t) else {
                continue;
            };
            let Some(e) = res.error else {
                return "accepted".into();
            };
            let code = e.detail_code_str().unwrap_or("no detail code").to_string();
            if code == "AUTH_RATE_LIMITED"
                && !e
                    .retry_after_ms
                    .is_some_and(|ms| (1..=60_000).contains(&ms))
            {
                return format!("AUTH_RATE_LIMITED with retryAfterMs {:?}", e.retry_after_ms);
            }
            return code;
        }
        "closed without an answer".into()
    };
    wait_within("the answer to a connect", RAW_WAIT, attempt).await
}

/// A `connect` whose `role` carries terminal escapes (CSI, 8-bit CSI, a
/// bidi override) and a newline followed by a forged log line: the serde
/// error echoes it into the handshake's log line.
pub fn hostile_connect_frame() -> String {
    let role = format!(
        "\u{1b}[31mred\u{1b}[0m\n{FORGED_LOG_LINE} INFO clawnode: admin logged in \u{9b}2J \u{202e}desrever \u{7f}"
    );
    serde_json::json!({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 3, "maxProtocol": 4, "role": role,
        "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"}}})
    .to_string()
}

/// The start of the line [`hostile_connect_frame`] tries to forge.
pub const FORGED_LOG_LINE: &str = "2099-01-01T00:00:00.000000Z";

/// Whether `c` must never reach a log raw: C0 and C1 controls, DEL, and
/// the bidi embeddings, overrides and isolates.
pub fn must_be_escaped(c: char) -> bool {
    c.is_control()
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}
