//! What hostile clients can make the gateway write to its log, with the
//! real binary: floods of refused connections and wrong tokens are summed
//! up in a few lines (per reason, at most one a 10 s interval, with counts
//! and the top source addresses), and values a client sent reach the log
//! escaped, in the text and JSON formats alike.

mod common;

use std::time::{Duration, Instant};

use common::node::attempt_from;
use common::*;
use serde_json::json;

/// Refused connects, and wrong-token attempts, each.
const FLOOD: u64 = 5_000;

/// The gateway's log lines from the `from`th on.
fn lines_since(gw: &TestGateway, from: usize) -> Vec<String> {
    gw.proc.log.lock().unwrap()[from..].to_vec()
}

/// A field's value in a text log line (`name=value` or `name="value"`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

/// A summary's reason: `reason`, `error_code` for rejected handshakes,
/// `decision` for admission decisions.
fn reason(line: &str) -> Option<&str> {
    field(line, "reason")
        .or_else(|| field(line, "error_code"))
        .or_else(|| field(line, "decision"))
}

/// The sum of `count=` over the lines holding `message` whose reason
/// passes `pass`.
fn summed(lines: &[String], message: &str, pass: impl Fn(&str) -> bool) -> u64 {
    lines
        .iter()
        .filter(|l| l.contains(message) && reason(l).is_some_and(&pass))
        .filter_map(|l| field(l, "count")?.parse::<u64>().ok())
        .sum()
}

const REFUSALS: &str = "refusing connections (HTTP 503)";
const REJECTIONS: &str = "handshakes rejected";
const WRONG_TOKEN: [&str; 2] = ["AUTH_TOKEN_MISMATCH", "AUTH_RATE_LIMITED"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_of_refused_connects_and_wrong_tokens_are_summed_up_in_a_few_lines() {
    let gw = TestGateway::start_with_config("[gateway]\nmax_pending_handshakes_per_ip = 4\n");
    let before = gw.proc.log.lock().unwrap().len();
    let started = Instant::now();

    // 127.0.0.2 holds its 4 pending handshakes with sockets that never
    // speak; every further connect from it is refused with 503. (A held
    // socket the handshake timeout closes is replaced by the next one.)
    let mut held = Vec::new();
    let (mut refused, mut attempts) = (0u64, 0u64);
    while refused < FLOOD {
        attempts += 1;
        assert!(
            attempts <= 2 * FLOOD && started.elapsed() < Duration::from_secs(90),
            "{refused} connects refused with 503 after {attempts} attempts in {:?}",
            started.elapsed()
        );
        let mut s = connect_from("127.0.0.2", gw.addr).await.expect("connect");
        if refused_with_503(&mut s).await {
            refused += 1;
        } else {
            held.push(s);
        }
    }
    let refusals_took = started.elapsed();

    // 5,000 connects with a wrong token from 127.0.0.3, 3 at a time (under
    // its pending-handshake cap): 20 mismatches, then rate limited.
    let wrong = clawnode::config::Secret::new("wrong-token");
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FLOOD as u32 {
        if tasks.len() >= 3 {
            let code = tasks.join_next().await.expect("a task").expect("attempt");
            *codes.entry(code).or_default() += 1;
        }
        let (addr, wrong) = (gw.addr, wrong.clone());
        tasks.spawn(async move { token_attempt(addr, "127.0.0.3", &wrong, i).await });
    }
    while let Some(code) = tasks.join_next().await {
        *codes.entry(code.expect("attempt")).or_default() += 1;
    }
    assert_eq!(
        codes.get("AUTH_TOKEN_MISMATCH").copied(),
        Some(20),
        "{codes:?}"
    );
    assert_eq!(
        codes.get("AUTH_RATE_LIMITED").copied(),
        Some(FLOOD - 20),
        "{codes:?}"
    );
    let floods_took = started.elapsed();

    // The summaries of the last interval come within 10 s of the last
    // event: wait (up to 30 s) until they account for every event.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut refusals_summed, mut rejections_summed);
    loop {
        let lines = lines_since(&gw, before);
        refusals_summed = summed(&lines, REFUSALS, |_| true);
        rejections_summed = summed(&lines, REJECTIONS, |r| WRONG_TOKEN.contains(&r));
        if (refusals_summed >= FLOOD && rejections_summed >= FLOOD) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);

    let lines = lines_since(&gw, before);
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    let about_rejections = count(REJECTIONS) + count("handshake rejected");
    eprintln!(
        "{FLOOD} refused connects ({refusals_took:?}) and {FLOOD} wrong tokens \
         ({:?}): {} gateway log lines, {} about refusals, {} about rejected handshakes",
        floods_took - refusals_took,
        lines.len(),
        count("refusing connections"),
        about_rejections
    );
    let shown = |l: &[String]| l.iter().take(12).cloned().collect::<Vec<_>>().join("\n");
    // Per reason: the first event at once, then at most one line a 10 s
    // interval (the floods take a few intervals at most; the held sockets'
    // handshake timeouts are one more reason).
    assert!(
        lines.len() <= 20,
        "{} log lines for {FLOOD} refused connects and {FLOOD} wrong tokens; the first:\n{}",
        lines.len(),
        shown(&lines)
    );
    // Every event is counted, and the summaries name the top address.
    assert_eq!(refusals_summed, FLOOD, "{}", shown(&lines));
    assert_eq!(rejections_summed, FLOOD, "{}", shown(&lines));
    for (message, why, source) in [
        (
            REFUSALS,
            "too many pending handshakes from this address",
            "127.0.0.2",
        ),
        (REJECTIONS, "AUTH_RATE_LIMITED", "127.0.0.3"),
    ] {
        let line = lines
            .iter()
            .filter(|l| l.contains(message) && reason(l).is_some_and(|r| r.starts_with(why)))
            .max_by_key(|l| field(l, "count").and_then(|c| c.parse::<u64>().ok()))
            .unwrap_or_else(|| panic!("no {message:?} line for {why}:\n{}", shown(&lines)));
        let top = field(line, "top").unwrap_or_default();
        assert!(top.starts_with(&format!("{source} ×")), "{line}");
    }
    // The metrics still count every one.
    let (_, _, metrics) = get(gw.addr, "/metrics");
    assert!(
        series(
            &metrics,
            "clawnode_connections_refused_total{reason=\"per_ip_limit\"}"
        ) >= FLOOD as f64,
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "clawnode_auth_failures_total{code=\"AUTH_RATE_LIMITED\"}"
        ),
        (FLOOD - 20) as f64
    );
}

async fn client_values_reach_the_log_escaped(format: &str) {
    let gw = TestGateway::start_with_env(&["--log-format", format], &[("RUST_LOG", "debug")]);
    // Refused at the handshake: the reason echoes the role.
    let mut c = RawClient::open(&gw.url()).await;
    c.send_text(hostile_connect_frame()).await;
    let Outcome::Error(e, _) = c.await_response("c1").await else {
        panic!("the hostile connect was not refused")
    };
    assert!(e.message.contains("unknown variant"), "{e:?}");
    // After connect (the connect checks refuse controls and bidi overrides
    // in every client field): requests whose method is an OSC 52 clipboard
    // write, or holds a bidi override.
    let params = operator_params("cli", None, &["operator.read"], Some(&gw.operator_token()));
    let mut ok = RawClient::open(&gw.url()).await;
    assert!(matches!(ok.connect(&params).await, Outcome::Hello(_)));
    for method in ["\u{1b}]52;c;aGVsbG8=\u{7}", "evil\u{202e}gpj.exe"] {
        let refused = ok.call(method, json!({})).await.unwrap_err();
        assert_eq!(refused.code.as_str(), "INVALID_REQUEST", "{refused:?}");
    }

    gw.proc
        .wait_for_log("unknown variant", Duration::from_secs(10));
    gw.proc.wait_for_log("gpj.exe", Duration::from_secs(10));
    gw.proc.wait_for_log("aGVsbG8", Duration::from_secs(10));
    drop((c, ok));
    let lines = lines_since(&gw, 0);
    for line in &lines {
        let raw: Vec<String> = line
            .chars()
            .filter(|c| must_be_escaped(*c))
            .map(|c| format!("U+{:04X}", c as u32))
            .collect();
        assert!(
            raw.is_empty(),
            "{format} log line holds raw {raw:?}: {line:?}"
        );
        assert!(
            !line.starts_with(FORGED_LOG_LINE),
            "forged {format} log line: {line:?}"
        );
        if format == "json" {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            assert!(parsed.is_ok(), "not JSON: {line:?}");
        }
    }
    // Escaped, not dropped: the operator still sees what was sent, on the
    // line of the event it belongs to.
    let echo = lines
        .iter()
        .find(|l| l.contains("unknown variant"))
        .expect("the rejection");
    assert!(
        echo.contains("[31mred") && echo.contains(FORGED_LOG_LINE) && echo.contains("desrever"),
        "{echo}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_values_reach_the_text_log_escaped() {
    client_values_reach_the_log_escaped("text").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_values_reach_the_json_log_escaped() {
    client_values_reach_the_log_escaped("json").await;
}

/// `attempts` connects, `parallel` at a time, the `i`th from
/// `source(i)` with `identity(i)`: how many ended how.
async fn device_flood(
    gw: &TestGateway,
    attempts: usize,
    parallel: usize,
    source: impl Fn(usize) -> String,
    identity: impl Fn(usize) -> std::sync::Arc<clawnode::identity::DeviceIdentity>,
) -> std::collections::BTreeMap<String, usize> {
    let token = gw.token();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..attempts {
        if tasks.len() >= parallel {
            let code = tasks.join_next().await.expect("a task").expect("attempt");
            *outcomes.entry(code).or_default() += 1;
        }
        let (addr, token, from, id) = (gw.addr, token.clone(), source(i), identity(i));
        tasks.spawn(async move { attempt_from(addr, &from, &id, &token, None).await });
    }
    while let Some(code) = tasks.join_next().await {
        *outcomes.entry(code.expect("attempt")).or_default() += 1;
    }
    outcomes
}

const DECISIONS: &str = "admission decisions summed up";

/// Every admission decision is in the log with the device id and address
/// — approved on first use, approved by an operator (and by whom), a new
/// pending request, refusals of revoked devices, revocations — one line
/// each while they are few; under a flood (10,000 new devices under
/// `manual`, 10,000 attempts of a revoked device; by default 2,500 each) at most
/// `DECISION_LINES` a decision per 10 s, the rest summed up with their
/// count and the top addresses and devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_decisions_are_logged_with_device_and_address_and_summed_up_under_a_flood() {
    use clawnode::identity::DeviceIdentity;
    use std::sync::Arc;
    // 2,500 each by default (a debug build signs and verifies ~120
    // handshakes a second on 2 cores); `CLAWNODE_TEST_DEVICE_FLOOD=10000`
    // runs the 10,000 of the issue (docs/RELIABILITY.md has its figures).
    let flood: usize = std::env::var("CLAWNODE_TEST_DEVICE_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_500);
    assert!(flood > 1_000, "the flood must overflow the pairing queue");
    let (new_devices, revoked_attempts) = (flood, flood);
    let gw = TestGateway::start_with_config(
        "[gateway]\nadmission = \"manual\"\nadmission_cidrs = [\"127.0.9.0/24\"]\n",
    );
    let before = gw.proc.log.lock().unwrap().len();
    let started = Instant::now();

    // One device approved on first use (its address is trusted), one
    // pending then approved by an operator, then the first revoked.
    let trusted = Arc::new(DeviceIdentity::ephemeral("unused"));
    let waiting = Arc::new(DeviceIdentity::ephemeral("unused"));
    let token = gw.token();
    assert_eq!(
        attempt_from(gw.addr, "127.0.9.1", &trusted, &token, None).await,
        "accepted"
    );
    assert_eq!(
        attempt_from(gw.addr, "127.0.0.2", &waiting, &token, None).await,
        "PAIRING_REQUIRED"
    );
    let (code, _, err) = gw.operator_cli(&["devices", "approve"], &[waiting.device_id()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gw.operator_cli(&["devices", "revoke"], &[trusted.device_id()]);
    assert_eq!(code, 0, "{err}");

    // The floods: new devices from 8 addresses; the revoked device again
    // and again from its own.
    let new = device_flood(
        &gw,
        new_devices,
        24,
        |i| format!("127.0.1.{}", 1 + i % 8),
        |_| Arc::new(DeviceIdentity::ephemeral("unused")),
    )
    .await;
    assert_eq!(new.get("PAIRING_REQUIRED"), Some(&1_000), "{new:?}");
    assert_eq!(
        new.get("PAIRING_QUEUE_FULL"),
        Some(&(new_devices - 1_000)),
        "{new:?}"
    );
    let revoked = device_flood(
        &gw,
        revoked_attempts,
        24,
        |_| "127.0.9.1".to_string(),
        |_| trusted.clone(),
    )
    .await;
    assert_eq!(
        revoked.get("DEVICE_REVOKED"),
        Some(&revoked_attempts),
        "{revoked:?}"
    );
    let floods_took = started.elapsed();

    // Every decision is accounted for, one by one or in a summary (the
    // last interval's summary comes within 10 s).
    let accounted = |lines: &[String], decision: &str, one_by_one: &str| {
        let single = lines.iter().filter(|l| l.contains(one_by_one)).count() as u64;
        single + summed(lines, DECISIONS, |r| r == decision)
    };
    let expected = [
        ("pending", "new device waiting for approval", 1 + 1_000),
        (
            "refused_queue_full",
            "new device refused: the pairing queue is full",
            new_devices as u64 - 1_000,
        ),
        (
            "refused_revoked",
            "device refused: an operator revoked it",
            revoked_attempts as u64,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = lines_since(&gw, before);
        let done = expected
            .iter()
            .all(|(d, one, n)| accounted(&lines, d, one) >= *n);
        if done || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shown = |l: &[String]| l.join("\n");
    for (decision, one_by_one, n) in expected {
        assert_eq!(
            accounted(&lines, decision, one_by_one),
            n,
            "{decision}:\n{}",
            shown(&lines)
        );
    }
    let about_decisions = lines
        .iter()
        .filter(|l| {
            l.contains(DECISIONS)
                || l.contains("device approved")
                || l.contains("new device")
                || l.contains("device refused")
                || l.contains("by an operator")
        })
        .count();
    eprintln!(
        "{new_devices} new devices and {revoked_attempts} attempts of a revoked one in \
         {floods_took:?}: {} gateway log lines, {about_decisions} about admission decisions",
        lines.len()
    );
    // Per decision: at most 10 lines one by one, then one summary per 10 s
    // interval while the flood lasts; everything else (handshake summaries,
    // the operator commands' connections) is a few lines more.
    let intervals = floods_took.as_secs() / 10 + 2;
    let bound = 3 * (10 + intervals) + 8;
    assert!(
        about_decisions as u64 <= bound,
        "{about_decisions} lines about {} decisions (bound {bound}):\n{}",
        2 * flood + 2,
        shown(&lines)
    );
    assert!(
        lines.len() <= 200,
        "{} lines:\n{}",
        lines.len(),
        shown(&lines)
    );

    // The lines one by one name the device and the address.
    let line = |needle: &str, device: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle) && field(l, "device_id") == Some(device))
            .unwrap_or_else(|| panic!("no {needle:?} line for {device}:\n{}", shown(&lines)))
            .clone()
    };
    let first_use = line("device approved on first use", trusted.device_id());
    assert_eq!(
        field(&first_use, "address"),
        Some("127.0.9.1"),
        "{first_use}"
    );
    assert_eq!(
        field(&first_use, "policy"),
        Some("admission_cidrs"),
        "{first_use}"
    );
    let pending = line("new device waiting for approval", waiting.device_id());
    assert_eq!(field(&pending, "address"), Some("127.0.0.2"), "{pending}");
    assert!(field(&pending, "request_id").is_some(), "{pending}");
    let approved = line("device approved by an operator", waiting.device_id());
    assert_eq!(field(&approved, "address"), Some("127.0.0.2"), "{approved}");
    assert!(field(&approved, "approved_by").is_some(), "{approved}");
    let revocation = line("device revoked by an operator", trusted.device_id());
    assert_eq!(
        field(&revocation, "address"),
        Some("127.0.9.1"),
        "{revocation}"
    );
    let refusal = line(
        "device refused: an operator revoked it",
        trusted.device_id(),
    );
    assert_eq!(field(&refusal, "address"), Some("127.0.9.1"), "{refusal}");
    // The summaries name the top address and devices.
    let summary = lines
        .iter()
        .filter(|l| l.contains(DECISIONS) && reason(l) == Some("refused_revoked"))
        .max_by_key(|l| field(l, "count").and_then(|c| c.parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no summary of the revoked device:\n{}", shown(&lines)));
    assert!(
        field(summary, "top").is_some_and(|t| t.starts_with("127.0.9.1 ×")),
        "{summary}"
    );
    assert!(
        field(summary, "devices")
            .is_some_and(|d| d.starts_with(&format!("{} ×", trusted.device_id()))),
        "{summary}"
    );
    for l in &lines {
        assert!(!l.chars().any(must_be_escaped), "raw control in {l:?}");
    }
}
