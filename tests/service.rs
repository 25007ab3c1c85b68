//! systemd integration through the real binary: a unix datagram socket in
//! the test stands in for systemd's `NOTIFY_SOCKET` and for journald's
//! `/run/systemd/journal/socket` (bind-mounted in a private mount
//! namespace, so those two need root like the netns tests: `#[ignore]`d, run
//! by `.ci/run` with `-- --ignored`).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Proc, TestGateway, BIN};

/// Datagrams received on a socket, collected by a thread.
struct Receiver {
    path: PathBuf,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn bind(name: &str) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        Receiver {
            path,
            messages,
            _dir: dir,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn texts(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect()
    }

    /// Waits for a notification line (`READY=1`, `STATUS=...` prefix).
    fn wait_line(&self, line_prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            for m in self.texts() {
                if let Some(l) = m.lines().find(|l| l.starts_with(line_prefix)) {
                    return l.to_string();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no notification line {line_prefix:?} within {within:?}; got {:#?}",
                    self.texts()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count_lines(&self, line: &str) -> usize {
        self.texts()
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l == line)
            .count()
    }

    /// Waits until at least `n` lines equal `line`; panics past `within`.
    fn wait_count(&self, line: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count_lines(line) < n {
            if Instant::now() > deadline {
                panic!(
                    "fewer than {n} notification lines {line:?} within {within:?}; got {:#?}",
                    self.texts()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn notify_env(socket: &Receiver, watchdog_usec: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![("NOTIFY_SOCKET", socket.path().to_string())];
    if let Some(usec) = watchdog_usec {
        env.push(("WATCHDOG_USEC", usec.to_string()));
    }
    env
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn gateway_and_agent_tell_systemd_ready_status_watchdog_and_stopping() {
    let gw_socket = Receiver::bind("gw.notify");
    let gw_env = notify_env(&gw_socket, Some("1000000"));
    let mut gw = TestGateway::start_with_env(&[], &as_refs(&gw_env));

    // Ready once listening, with a status a person can read.
    let status = gw_socket.wait_line("STATUS=gateway listening on ", Duration::from_secs(5));
    assert!(status.ends_with(&gw.addr.to_string()), "{status}");
    assert!(gw_socket.count_lines("READY=1") >= 1);
    gw_socket.wait_line(
        "STATUS=gateway: 1 entry, 0 connections",
        Duration::from_secs(10),
    );
    // WATCHDOG_USEC=1s: pings every half second from the accept loop.
    gw_socket.wait_count("WATCHDOG=1", 3, Duration::from_millis(2200));

    // The agent is ready only once it has its hello-ok.
    let state = tempfile::tempdir().unwrap();
    let agent_socket = Receiver::bind("agent.notify");
    let agent_env = notify_env(&agent_socket, Some("1000000"));
    let tf = gw.token_file();
    let mut agent = Proc::spawn(
        &[
            "run",
            "--url",
            &gw.url(),
            "--token-file",
            tf.to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &as_refs(&agent_env),
    );
    let connected = agent_socket.wait_line("STATUS=connected to ", Duration::from_secs(10));
    let instance_id = std::fs::read_to_string(state.path().join("instance-id")).unwrap();
    assert_eq!(
        connected,
        format!("STATUS=connected to {} as {}", gw.url(), instance_id.trim())
    );
    assert_eq!(agent_socket.count_lines("READY=1"), 1);
    agent_socket.wait_count("WATCHDOG=1", 2, Duration::from_millis(1200));

    // The gateway's status follows its rows and connections.
    gw_socket.wait_line(
        "STATUS=gateway: 2 entries, 1 connection",
        Duration::from_secs(10),
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    let (code, _) = agent.terminate();
    assert_eq!(code, Some(0), "{}", agent.log_text());
    agent_socket.wait_line("STOPPING=1", Duration::from_secs(1));
    let (code, _) = gw.proc.terminate();
    assert_eq!(code, Some(0));
    gw_socket.wait_line("STOPPING=1", Duration::from_secs(1));
    // Once each, however the shutdown was noticed.
    assert_eq!(agent_socket.count_lines("STOPPING=1"), 1);
    assert_eq!(gw_socket.count_lines("STOPPING=1"), 1);
}

#[test]
fn an_agent_that_cannot_connect_says_why_and_is_not_ready() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let state = tempfile::tempdir().unwrap();
    let token = state.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    let socket = Receiver::bind("agent.notify");
    // The watchdog is another process's (WATCHDOG_PID): we must not ping it.
    let mut env = notify_env(&socket, Some("200000"));
    env.push(("WATCHDOG_PID", "1".to_string()));
    let mut agent = Proc::spawn(
        &[
            "run",
            "--url",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--state-dir",
            state.path().join("s").to_str().unwrap(),
        ],
        &as_refs(&env),
    );
    let status = socket.wait_line("STATUS=reconnecting in ", Duration::from_secs(10));
    assert!(status.ends_with("s: connection refused"), "{status}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(socket.count_lines("READY=1"), 0, "{:#?}", socket.texts());
    assert_eq!(socket.count_lines("WATCHDOG=1"), 0, "{:#?}", socket.texts());
    agent.terminate();
}

/// Parses journald's native protocol: `KEY=value\n`, or for binary-safe
/// values `KEY\n<u64 LE length><bytes>\n`.
fn parse_journal_entry(mut data: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n').expect("field ends");
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            data = &data[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            fields.insert(key, value);
            data = &rest[8 + len + 1..];
        }
    }
    fields
}

/// The journald tests run only when asked (see #[ignore]); then a missing
/// piece fails them.
fn require_mount_namespaces() {
    let root = rustix::process::geteuid().is_root();
    assert!(
        root,
        "the journald tests need root (a private mount namespace): cargo test -- --ignored as root"
    );
    let ok = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`unshare --mount` is not available (util-linux)");
}

/// Runs the binary in a private mount namespace whose
/// `/run/systemd/journal/socket` is `journal`'s socket.
fn spawn_with_journal(
    journal: &Receiver,
    args: &[&str],
    stderr: Stdio,
    env: &[(&str, String)],
) -> std::process::Child {
    let dir = journal.path.parent().unwrap().to_str().unwrap().to_string();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && mount --bind '{dir}' /run/systemd/journal && exec \"$0\" \"$@\""
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        BIN,
    ])
    .args(args)
    .env_remove("RUST_LOG")
    .env_remove("JOURNAL_STREAM")
    .env_remove("NOTIFY_SOCKET")
    .env("CLAWNODE_CONFIG", "/dev/null")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn clawnode under unshare")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_entry(
    journal: &Receiver,
    what: &str,
    pred: impl Fn(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries: Vec<_> = journal
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| !m.is_empty())
            .map(|m| parse_journal_entry(m))
            .collect();
        if let Some(e) = entries.iter().find(|e| pred(e)) {
            return e.clone();
        }
        if Instant::now() > deadline {
            panic!("no journal entry {what}; got {entries:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[test]
#[ignore = "needs root (a private mount namespace): see README"]
fn logs_go_to_the_journal_natively_with_structured_fields() {
    require_mount_namespaces();
    let journal = Receiver::bind("socket");
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let gw = spawn_with_journal(
        &journal,
        &[
            "run",
            "--gateway",
            "--listen",
            &listen,
            "--state-dir",
            state.path().to_str().unwrap(),
            "--log-format",
            "journald",
        ],
        Stdio::null(),
        &[],
    );
    let listening = wait_entry(&journal, "gateway listening", |e| {
        e.get("MESSAGE").is_some_and(|m| m == "gateway listening")
    });
    let instance_id = std::fs::read_to_string(state.path().join("instance-id")).unwrap();
    assert_eq!(listening["INSTANCE_ID"], instance_id.trim());
    assert_eq!(listening["GATEWAY_LISTEN"], listen);
    assert_eq!(listening["SYSLOG_IDENTIFIER"], "clawnode");
    assert_eq!(
        listening["PRIORITY"], "6",
        "info is journald's informational"
    );
    assert_eq!(
        listening["LISTEN"], listen,
        "event fields are journal fields"
    );

    // A refused handshake (the first: logged at once, the rest summed up
    // every 10 s): its connection id, error code and count are fields.
    let agent_state = tempfile::tempdir().unwrap();
    let bad_token = agent_state.path().join("token");
    std::fs::write(&bad_token, "wrong\n").unwrap();
    let mut agent = Proc::spawn(
        &[
            "run",
            "--url",
            &format!("ws://{listen}"),
            "--token-file",
            bad_token.to_str().unwrap(),
            "--state-dir",
            agent_state.path().join("s").to_str().unwrap(),
        ],
        &[],
    );
    let rejected = wait_entry(&journal, "handshakes rejected", |e| {
        e.get("MESSAGE").is_some_and(|m| m == "handshakes rejected")
    });
    assert_eq!(rejected["ERROR_CODE"], "AUTH_TOKEN_MISMATCH");
    assert_eq!(rejected["COUNT"], "1", "{rejected:#?}");
    assert!(rejected["TOP"].starts_with("127.0.0.1 ×1"), "{rejected:#?}");
    assert!(
        uuid::Uuid::parse_str(&rejected["CONN_ID"]).is_ok(),
        "{rejected:#?}"
    );
    assert!(
        !journal.texts().iter().any(|m| m.contains("wrong")),
        "the token never reaches the journal"
    );
    agent.terminate();
    stop(gw);
}

/// Finding 4 in the journal: what a hostile `connect` put in its `role`
/// (terminal escapes, a newline and a forged line, 8-bit CSI, a bidi
/// override, DEL) reaches every journal field escaped.
#[test]
#[ignore = "needs root (a private mount namespace): see README"]
fn client_values_reach_the_journal_escaped() {
    require_mount_namespaces();
    let journal = Receiver::bind("socket");
    let state = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let gw = spawn_with_journal(
        &journal,
        &[
            "run",
            "--gateway",
            "--listen",
            &listen,
            "--state-dir",
            state.path().to_str().unwrap(),
            "--log-format",
            "journald",
        ],
        Stdio::null(),
        &[("RUST_LOG", "debug".to_string())],
    );
    wait_entry(&journal, "gateway listening", |e| {
        e.get("MESSAGE").is_some_and(|m| m == "gateway listening")
    });
    let url = format!("ws://{listen}");
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            let mut c = common::RawClient::open(&url).await;
            c.send_text(common::hostile_connect_frame()).await;
            c.await_response("c1").await
        });
    let rejected = wait_entry(&journal, "handshake rejected (debug)", |e| {
        e.get("MESSAGE").is_some_and(|m| m == "handshake rejected")
    });
    let reason = &rejected["REASON"];
    assert!(
        reason.contains("\\u{1b}[31mred")
            && reason.contains(&format!("\\n{}", common::FORGED_LOG_LINE))
            && reason.contains("\\u{9b}2J \\u{202e}desrever \\u{7f}"),
        "{rejected:#?}"
    );
    let entries = journal.messages.lock().unwrap().clone();
    for entry in entries.iter().filter(|m| !m.is_empty()) {
        let entry = parse_journal_entry(entry);
        let raw: Vec<String> = entry
            .values()
            .flat_map(|v| v.chars())
            .filter(|c| common::must_be_escaped(*c))
            .map(|c| format!("U+{:04X}", c as u32))
            .collect();
        assert!(
            raw.is_empty(),
            "a journal field holds raw {raw:?}: {entry:?}"
        );
    }
    stop(gw);
}

#[test]
#[ignore = "needs root (a private mount namespace): see README"]
fn auto_format_uses_the_journal_only_when_stderr_is_the_journal_stream() {
    require_mount_namespaces();
    let state = tempfile::tempdir().unwrap();
    let stderr_path = state.path().join("stderr.log");
    let run = |journal_stream: Option<String>| {
        let journal = Receiver::bind("socket");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let meta = stderr.metadata().unwrap();
        let stream = journal_stream.unwrap_or(format!("{}:{}", meta.dev(), meta.ino()));
        let listen = format!("127.0.0.1:{}", free_port());
        let child = spawn_with_journal(
            &journal,
            &[
                "run",
                "--gateway",
                "--listen",
                &listen,
                "--state-dir",
                state.path().join("s").to_str().unwrap(),
            ],
            Stdio::from(stderr),
            &[("JOURNAL_STREAM", stream)],
        );
        // Ready means it logged its start-up lines somewhere.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journal.texts().join("").contains("gateway listening")
            && !std::fs::read_to_string(&stderr_path)
                .unwrap()
                .contains("gateway listening")
        {
            assert!(
                Instant::now() < deadline,
                "\"gateway listening\" neither in the journal nor on stderr within 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop(child);
        let text = std::fs::read_to_string(&stderr_path).unwrap();
        (journal.texts().join(""), text)
    };
    // stderr is the stream systemd named: the journal gets the lines.
    let (journal, stderr) = run(None);
    assert!(journal.contains("gateway listening"), "{journal}");
    assert!(!stderr.contains("gateway listening"), "{stderr}");
    // A JOURNAL_STREAM inherited from elsewhere: stderr text.
    let (journal, stderr) = run(Some("1:1".into()));
    assert!(!journal.contains("gateway listening"), "{journal}");
    assert!(stderr.contains("gateway listening"), "{stderr}");
}

#[test]
fn check_config_prints_the_effective_configuration_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "very-secret-token\n").unwrap();
    let cfg = dir.path().join("clawnode.toml");
    std::fs::write(
        &cfg,
        format!(
            "url = \"wss://gw.example.internal:18789\"\ntoken_file = \"{}\"\nbeacon_interval_secs = 15\n",
            token.display()
        ),
    )
    .unwrap();
    let (code, out, err) = common::run_cli(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("url = \"wss://gw.example.internal:18789\""),
        "{out}"
    );
    assert!(out.contains("beacon_interval_secs = 15"), "{out}");
    assert!(out.contains("# role: agent"), "{out}");
    assert!(out.contains("(redacted)"), "{out}");
    assert!(!out.contains("very-secret-token") && !err.contains("very-secret-token"));

    // Flags apply as they would to `run`.
    let (code, out, _) = common::run_cli(&[
        "check-config",
        "--config",
        cfg.to_str().unwrap(),
        "--gateway",
        "--listen",
        "0.0.0.0:18789",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("# role: gateway") && out.contains("listen = \"0.0.0.0:18789\""),
        "{out}"
    );

    // An unknown key: exit 1, one line naming the file, line and key.
    std::fs::write(
        &cfg,
        "url = \"ws://a:1\"\n\n[gateway]\nlisten_address = \"x\"\n",
    )
    .unwrap();
    let (code, out, err) = common::run_cli(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{}, line 4", cfg.display())), "{err}");
    assert!(err.contains("listen_address"), "{err}");

    // A token file that cannot be read is caught before `run` would be.
    std::fs::write(&cfg, "token_file = \"/nonexistent/token\"\n").unwrap();
    let (code, _, err) = common::run_cli(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/token"), "{err}");
}

#[test]
fn json_log_format_writes_one_object_a_line() {
    let state = tempfile::tempdir().unwrap();
    let mut gw = Proc::spawn(
        &[
            "run",
            "--gateway",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &[],
    );
    let line = gw.wait_for_log("gateway listening", Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "gateway listening", "{v}");
    assert!(
        v["listen"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "{v}"
    );
    assert!(v["timestamp"].is_string(), "{v}");
    gw.terminate();
    for l in gw.log_text().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}
