//! The real OpenClaw clients against our gateway (issue items 3 and 4): the
//! `openclaw gateway call` CLI, and the `openclaw node run` node host.

use std::future::Future;
use std::time::{Duration, Instant};

use clawnode::config::Secret;
use serde_json::{json, Value};

use crate::common::openclaw::{json_part, OpenClawHome};
use crate::common::*;

/// Runs a future to completion on a runtime of its own (these tests are
/// synchronous: the OpenClaw processes are driven with blocking calls).
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// `method` on our gateway through our own client: what the gateway returned.
fn ours(url: &str, token: &Secret, method: &str) -> Value {
    block_on(clawnode::client::call(
        url,
        &Default::default(),
        Some(token),
        method,
        Value::Null,
    ))
    .unwrap_or_else(|e| panic!("our client: {method}: {e:#}"))
}

/// `openclaw ARGS` to completion: (exit code, stdout, stderr).
fn openclaw(home: &OpenClawHome, args: &[&str]) -> (i32, String, String) {
    let out = home.command(args).output().expect("run openclaw");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openclaw gateway call METHOD --url URL --token T --json [--params P]`:
/// (exit code, the JSON it printed).
fn cli_call(
    home: &OpenClawHome,
    url: &str,
    token: &Secret,
    method: &str,
    params: Option<Value>,
) -> (i32, Value) {
    let params = params.map(|p| p.to_string());
    let mut args = vec![
        "gateway",
        "call",
        method,
        "--url",
        url,
        "--token",
        token.expose(),
        "--json",
    ];
    if let Some(p) = &params {
        args.extend(["--params", p]);
    }
    let (code, out, err) = openclaw(home, &args);
    let json = serde_json::from_str(json_part(&out)).unwrap_or_else(|e| {
        panic!("openclaw gateway call {method}: no JSON ({e}), exit {code}:\n{out}\n{err}")
    });
    (code, json)
}

/// The CLI's answer to `method` and ours, asked right before and after it,
/// compared after `clean` (which drops what moves on its own). A change that
/// lands between the calls (a tick, a beacon) is retried.
fn cli_matches_ours(
    home: &OpenClawHome,
    url: &str,
    token: &Secret,
    method: &str,
    clean: impl Fn(&Value) -> Value,
) -> Value {
    let mut last = None;
    for _ in 0..3 {
        let before = ours(url, token, method);
        let (code, cli) = cli_call(home, url, token, method, None);
        assert_eq!(code, 0, "openclaw gateway call {method} failed: {cli:#}");
        let after = ours(url, token, method);
        if clean(&cli) == clean(&before) || clean(&cli) == clean(&after) {
            return cli;
        }
        last = Some((cli, before, after));
    }
    let (cli, before, after) = last.unwrap_or_default();
    panic!("openclaw's {method} differs from ours:\nCLI: {cli:#}\nours before: {before:#}\nours after: {after:#}");
}

/// `v` without the top-level `fields`.
fn without(v: &Value, fields: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|k, _| !fields.contains(&k.as_str()));
    }
    v
}

/// A presence list without the self entry's `ts` (it is the time of asking).
fn without_self_ts(list: &Value) -> Value {
    rows(list)
        .iter()
        .map(|e| {
            if e["reason"] == "self" {
                without(e, &["ts"])
            } else {
                e.clone()
            }
        })
        .collect()
}

fn self_ts(list: &[Value]) -> u64 {
    list.iter()
        .find(|e| e["reason"] == "self")
        .and_then(|e| e["ts"].as_u64())
        .unwrap_or_else(|| panic!("no self entry with ts: {list:#?}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rows(list: &Value) -> &[Value] {
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("not a list: {list:#}"))
}

#[test]
fn openclaw_cli_reads_our_gateway() {
    let gw = TestGateway::start(&[]);
    // The CLI is an operator: the operator token (the join token in
    // gateway.token grants role node only).
    let (url, token) = (gw.url(), gw.operator_token());
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = gw.agent(agent_dir.path(), &["--display-name", "cn-cli-node"]);
    block_on(gw.wait_presence("our agent", |l| {
        l.iter()
            .any(|e| e.host.as_deref() == Some("cn-cli-node") && e.mode.as_deref() == Some("node"))
    }));
    let home = OpenClawHome::new();

    // system-presence: exit 0 and exactly our list (self entry + the node).
    let before = ours(&url, &token, "system-presence");
    let list = cli_matches_ours(&home, &url, &token, "system-presence", without_self_ts);
    let list = rows(&list);
    assert!(self_ts(rows(&before)) <= self_ts(list), "{list:#?}");
    assert!(self_ts(list) <= self_ts(rows(&ours(&url, &token, "system-presence"))));
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(
        list.iter()
            .any(|e| e["mode"] == "gateway" && e["reason"] == "self"),
        "{list:#?}"
    );
    assert!(
        list.iter()
            .any(|e| e["mode"] == "node" && e["host"] == "cn-cli-node"),
        "{list:#?}"
    );

    // One more CLI call, alone: its one connection was mode cli and left no
    // row (a row of a non-cli client would stay, as "disconnect", until the TTL).
    let connects = || {
        (
            gw.proc.count_log("connected role="),
            gw.proc
                .count_log("connected role=\"operator\" mode=cli client=cli"),
        )
    };
    let (all, cli) = connects();
    let (code, out) = cli_call(&home, &url, &token, "system-presence", None);
    assert_eq!(code, 0, "{out:#}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while connects().0 == all && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(connects(), (all + 1, cli + 1), "{}", gw.proc.log_text());
    let after = ours(&url, &token, "system-presence");
    assert_eq!(rows(&after).len(), 2, "{after:#}");
    assert!(rows(&after).iter().all(|e| e["mode"] != "cli"), "{after:#}");

    // health: ours too (the CLI and our client each count as one connection).
    let health = cli_matches_ours(&home, &url, &token, "health", |h| {
        without(h, &["ts", "uptimeMs"])
    });
    assert_eq!(health["ok"], true, "{health:#}");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["nodes"], 1, "{health:#}");
    assert_eq!(health["presence"]["entries"], 2, "{health:#}");

    // Errors reach the CLI as ours: a node-only method, an unknown method.
    let (code, out) = cli_call(
        &home,
        &url,
        &token,
        "node.skills.update",
        Some(json!({ "skills": [] })),
    );
    assert_ne!(code, 0, "{out:#}");
    assert_eq!(out["error"]["code"], "FORBIDDEN", "{out:#}");
    assert_eq!(
        out["error"]["message"], "node.skills.update requires role node",
        "{out:#}"
    );
    let (code, out) = cli_call(&home, &url, &token, "no.such.method", None);
    assert_ne!(code, 0, "{out:#}");
    assert_eq!(out["error"]["code"], "INVALID_REQUEST", "{out:#}");
    assert_eq!(out["error"]["message"], "unknown method: no.such.method");
}

#[test]
fn openclaw_cli_reads_a_list_sent_in_fragments() {
    // A list far over one frame (16 KiB): the hello-ok and the
    // `system-presence` answer reach the CLI as fragmented text messages.
    let gw = TestGateway::start(&[]);
    // The CLI is an operator: the operator token (the join token in
    // gateway.token grants role node only).
    let (url, token) = (gw.url(), gw.operator_token());
    block_on(async {
        let mut admin = open_operator(&gw, "ui", Some("admin-ui"), &["operator.admin"]).await;
        for n in 0..60 {
            let row = format!("row-{n}");
            let text = format!("{n} {}", "é".repeat(1_900));
            admin
                .call(
                    "system-event",
                    json!({ "text": text, "instanceId": row, "host": row, "mode": "node" }),
                )
                .await
                .expect("row written");
        }
    });
    let home = OpenClawHome::new();
    let list = cli_matches_ours(&home, &url, &token, "system-presence", without_self_ts);
    let list = rows(&list);
    assert_eq!(list.len(), 62, "self, the admin page and 60 rows");
    let bytes: usize = list.iter().map(|e| e.to_string().len()).sum();
    assert!(bytes > 200_000, "a list of {bytes} bytes");
}

/// Our gateway with a 5 s tick and debug logging (every request answered
/// or refused is logged).
struct DebugGateway {
    inner: TestGateway,
    /// The join token (role node): what `openclaw node run` holds.
    token: Secret,
    /// The operator token: what `openclaw gateway call` holds.
    operator: Secret,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for DebugGateway {
    type Target = TestGateway;
    fn deref(&self) -> &TestGateway {
        &self.inner
    }
}

impl DebugGateway {
    fn start() -> DebugGateway {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("clawnode.toml");
        std::fs::write(&config, "[gateway]\ntick_interval_secs = 5\n").unwrap();
        let inner = TestGateway::start_with_env(
            &["--config", config.to_str().unwrap()],
            &[("RUST_LOG", "info,clawnode=debug")],
        );
        let (token, operator) = (inner.token(), inner.operator_token());
        DebugGateway {
            inner,
            token,
            operator,
            _dir: dir,
        }
    }

    fn presence(&self) -> Vec<Value> {
        rows(&ours(&self.url(), &self.operator, "system-presence")).to_vec()
    }

    /// Log lines of connection `conn_id` that contain `needle`.
    fn conn_lines(&self, conn_id: &str, needle: &str) -> Vec<String> {
        let span = format!("conn_id={conn_id} ");
        self.proc
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&span) && l.contains(needle))
            .cloned()
            .collect()
    }
}

const NODE_NAME: &str = "oc-node-interop";
const STAY: Duration = Duration::from_secs(120);

/// What the node host may print while all is well; anything like these
/// means it is unhappy.
const NODE_HOST_NOISE: &[&str] = &[
    "closed",
    "failed",
    "error",
    "reconnect",
    "timeout",
    "paused",
    "retry",
];

#[test]
fn openclaw_node_host_stays_on_our_gateway() {
    let gw = DebugGateway::start();
    let home = OpenClawHome::new();
    let port = gw.addr.port().to_string();
    let mut cmd = home.command(&[
        "node",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--display-name",
        NODE_NAME,
    ]);
    cmd.env("OPENCLAW_GATEWAY_TOKEN", gw.token.expose());
    let mut node = Proc::spawn_command(cmd);
    node.wait_for_log("node host gateway connected", Duration::from_secs(90));

    // One connection: role node, protocol 4, signed device identity.
    let connected = gw.proc.wait_for_log(
        "connected role=\"node\" mode=node client=node-host",
        Duration::from_secs(10),
    );
    assert!(connected.contains("protocol=4"), "{connected}");
    let conn_id = connected
        .split("conn_id=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no conn_id in {connected:?}"))
        .to_string();

    // In our presence with its display name, platform and device family.
    let row = gw
        .presence()
        .into_iter()
        .find(|e| e["host"] == NODE_NAME)
        .unwrap_or_else(|| panic!("{NODE_NAME} not in presence: {:#?}", gw.presence()));
    assert_eq!(row["mode"], "node", "{row:#}");
    assert_eq!(row["platform"], "linux", "{row:#}");
    assert_eq!(row["deviceFamily"], "Linux", "{row:#}");
    assert_eq!(row["roles"], json!(["node"]), "{row:#}");
    let instance_id = row["instanceId"].as_str().expect("instanceId").to_string();
    assert!(
        connected.contains(&format!("instance_id=\"{instance_id}\"")),
        "{connected}"
    );
    let identity: Value = home.run_json(&["node", "identity", "--json"]);
    assert_eq!(row["deviceId"], identity["deviceId"], "{row:#}");

    // Its publications are answered (ok), not refused.
    for method in [
        "node.event",
        "node.runnerInventory.update",
        "node.skills.update",
        "node.pluginTools.update",
    ] {
        gw.proc.wait_for_log(
            &format!("request answered method=\"{method}\""),
            Duration::from_secs(10),
        );
    }

    // Two minutes, with 5 s ticks (its watchdog closes after 2 ticks of
    // silence) and its host stats every 60 s: one connection throughout.
    let start = Instant::now();
    while start.elapsed() < STAY {
        std::thread::sleep(Duration::from_secs(5));
        let row = gw
            .presence()
            .into_iter()
            .find(|e| e["instanceId"] == instance_id.as_str());
        let row = row.unwrap_or_else(|| panic!("node row gone: {:#?}", gw.presence()));
        assert_eq!(row["reason"], "connect", "{row:#}");
        // Each tick refreshes a connected row.
        let age = now_ms().saturating_sub(row["ts"].as_u64().unwrap_or(0));
        assert!(age < 15_000, "row not refreshed for {age} ms: {row:#}");
        assert_eq!(
            gw.proc.count_log("connected role=\"node\""),
            1,
            "the node reconnected after {:?}:\n{}\nnode host:\n{}",
            start.elapsed(),
            gw.proc.log_text(),
            node.log_text()
        );
        let gone = gw.conn_lines(&conn_id, "disconnected");
        assert!(gone.is_empty(), "{gone:?}\nnode host:\n{}", node.log_text());
    }
    let refused = gw.conn_lines(&conn_id, "request refused");
    assert!(refused.is_empty(), "refused: {refused:#?}");
    let stats = gw.conn_lines(&conn_id, "request answered method=\"node.event\"");
    assert!(stats.len() >= 2, "host stats every 60 s: {stats:#?}");
    assert_eq!(node.count_log("node host gateway connected"), 1);
    let noise: Vec<String> = node
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            let l = l.to_lowercase();
            NODE_HOST_NOISE.iter().any(|n| l.contains(n))
        })
        .cloned()
        .collect();
    assert!(noise.is_empty(), "node host noise: {noise:#?}");

    // Its host stats reached node.list (read through the OpenClaw CLI).
    let home_cli = OpenClawHome::new();
    let (code, list) = cli_call(&home_cli, &gw.url(), &gw.operator, "node.list", None);
    assert_eq!(code, 0, "{list:#}");
    let listed = list["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["displayName"] == NODE_NAME))
        .unwrap_or_else(|| panic!("{NODE_NAME} not in node.list: {list:#}"));
    assert_eq!(listed["nodeId"], identity["deviceId"], "{listed:#}");
    assert!(
        listed["hostStats"]["cpuCount"].as_u64() > Some(0),
        "{listed:#}"
    );

    // SIGTERM: it closes cleanly (close handshake completed: 1005, not 1006).
    // (It ends by the signal itself, or with 143 when its handler finishes first.)
    let (code, _) = node.terminate();
    assert!(
        matches!(code, None | Some(143)),
        "exit {code:?}: {}",
        node.log_text()
    );
    let closed = node.wait_for_log("node host gateway closed (", Duration::from_secs(5));
    assert!(closed.contains("(1005)"), "{}", node.log_text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.conn_lines(&conn_id, "disconnected").is_empty() {
        assert!(Instant::now() < deadline, "{}", gw.proc.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let row = gw
        .presence()
        .into_iter()
        .find(|e| e["instanceId"] == instance_id.as_str())
        .expect("the row stays until the TTL");
    assert_eq!(row["reason"], "disconnect", "{row:#}");
}
