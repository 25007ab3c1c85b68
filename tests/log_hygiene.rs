//! What hostile clients can make the gateway write to its log, with the
//! real binary: floods of refused connections and wrong tokens are summed
//! up in a few lines (per reason, at most one a 10 s interval, with counts
//! and the top source addresses), and values a client sent reach the log
//! escaped, in the text and JSON formats alike.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The gateway's log lines from the `from`th on.
fn lines_since(gw: &TestGateway, from: usize) -> Vec<String> {
    gw.proc.log.lock().unwrap()[from..].to_vec()
}

/// A `connect` whose `role` carries terminal escapes (CSI, 8-bit CSI, a
/// bidi override) and a newline followed by a forged log line: the serde
/// error echoes it into the handshake's log line.
fn hostile_connect() -> String {
    let role = format!(
        "\u{1b}[31mred\u{1b}[0m\n{FORGED} INFO clawnode: admin logged in \u{9b}2J \u{202e}desrever \u{7f}"
    );
    json!({"type": "req", "id": "c1", "method": "connect", "params": {
        "minProtocol": 3, "maxProtocol": 4, "role": role,
        "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"}}})
    .to_string()
}

/// The start of the forged line.
const FORGED: &str = "2099-01-01T00:00:00.000000Z";

/// Whether `c` must never reach a log raw: C0 and C1 controls, DEL, and
/// the bidi controls.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

async fn client_values_reach_the_log_escaped(format: &str) {
    let gw = TestGateway::start_with_env(&["--log-format", format], &[("RUST_LOG", "debug")]);
    // Refused at the handshake: the reason echoes the role.
    let mut c = RawClient::open(&gw.url()).await;
    c.send_text(hostile_connect()).await;
    let Outcome::Error(e, _) = c.await_response("c1").await else {
        panic!("the hostile connect was not refused")
    };
    assert!(e.message.contains("unknown variant"), "{e:?}");
    // Let in: a bidi override in the client id passes the connect checks
    // (they refuse C0/C1 controls) and is logged with `connected`.
    let mut params = operator_params("cli", None, &["operator.read"], Some(&gw.token()));
    params.client.id = "evil\u{202e}gpj.exe".into();
    let mut ok = RawClient::open(&gw.url()).await;
    assert!(matches!(ok.connect(&params).await, Outcome::Hello(_)));
    // After connect: a request whose method is an OSC 52 clipboard write.
    let osc = "\u{1b}]52;c;aGVsbG8=\u{7}";
    let refused = ok.call(osc, json!({})).await.unwrap_err();
    assert_eq!(refused.code.as_str(), "INVALID_REQUEST", "{refused:?}");

    gw.proc
        .wait_for_log("unknown variant", Duration::from_secs(10));
    gw.proc.wait_for_log("gpj.exe", Duration::from_secs(10));
    gw.proc.wait_for_log("aGVsbG8", Duration::from_secs(10));
    drop((c, ok));
    let lines = lines_since(&gw, 0);
    for line in &lines {
        let raw: Vec<String> = line
            .chars()
            .filter(|c| unsafe_char(*c))
            .map(|c| format!("U+{:04X}", c as u32))
            .collect();
        assert!(
            raw.is_empty(),
            "{format} log line holds raw {raw:?}: {line:?}"
        );
        assert!(
            !line.starts_with(FORGED),
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
        echo.contains("[31mred") && echo.contains(FORGED) && echo.contains("desrever"),
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
