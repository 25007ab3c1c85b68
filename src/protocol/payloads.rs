//! Event payloads and method parameters beyond the handshake.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `connect.challenge` payload: `{nonce, ts}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectChallenge {
    pub nonce: String,
    pub ts: u64,
}

/// `tick` payload: `{ts}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickEvent {
    pub ts: u64,
}

/// `shutdown` payload: `{reason, restartExpectedMs?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownEvent {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_expected_ms: Option<u64>,
}

/// `presence` event payload: `{presence: [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub presence: Vec<PresenceEntry>,
}

/// One row of the presence list, as `PresenceEntry` in the pinned protocol
/// schema (a closed object). Absent fields are omitted, never `null`.
/// OpenClaw 2026.9.6 also sends `clientId`, which that schema does not
/// allow; we accept it when reading and do not send it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_input_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last update, ms since the Unix epoch.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// clawnode's addition: the operator's label of the row's device
    /// (`clawnode devices rename`, OpenClaw's `device.pair.rename`), set by
    /// the gateway, never by a client. OpenClaw's name for the same fact on
    /// a device record; absent when the device has none. Not in the pinned
    /// schema's closed `PresenceEntry` (docs/interop.md): OpenClaw's clients
    /// ignore fields they do not know, as they do OpenClaw's own `clientId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_label: Option<String>,
}

/// `system-event` parameters: a presence beacon.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemEventParams {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_input_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Longest beacon `text` a gateway keeps, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest other presence field (host, platform, ...), in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// Checks that an optional string field is at most [`MAX_FIELD_BYTES`].
pub(crate) fn check_field(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) if v.len() > MAX_FIELD_BYTES => Err(format!(
            "{name} is {} bytes; at most {MAX_FIELD_BYTES} are allowed",
            v.len()
        )),
        // These fields are shown in tables and logs: a control character
        // (NUL, ESC, newline) could forge lines or drive a terminal, a bidi
        // override reorder what is shown.
        Some(v) if v.chars().any(crate::safe_text::is_unsafe) => Err(format!(
            "{name} must not contain control characters or bidi overrides"
        )),
        _ => Ok(()),
    }
}

/// The `reason`s only a gateway assigns: its own row's (`self`) and a
/// closed connection's row's (`disconnect`, rule 6).
pub const GATEWAY_REASONS: [&str; 2] = ["self", "disconnect"];

/// Refuses `mode: "gateway"` (any case) from a client: that mode marks the
/// gateway's own row, which tables sort first.
pub(crate) fn check_not_reserved_mode(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(m) if m.trim().eq_ignore_ascii_case(super::mode::GATEWAY) => Err(format!(
            "{name} \"{}\" is reserved for the gateway's own row",
            super::mode::GATEWAY
        )),
        _ => Ok(()),
    }
}

impl SystemEventParams {
    /// As a gateway keeps it: line breaks and tabs in `text` become spaces
    /// (a multi-line note stays one row), then [`Self::validate`].
    pub fn normalized(mut self) -> Result<Self, String> {
        if self.text.contains(['\n', '\r', '\t']) {
            self.text = self.text.replace(['\n', '\r', '\t'], " ");
        }
        self.validate()?;
        Ok(self)
    }

    /// Bounds every field so presence rows (and the lists broadcast to every
    /// operator) stay small: `text` non-empty and at most [`MAX_TEXT_BYTES`],
    /// other strings at most [`MAX_FIELD_BYTES`]; none holds a control
    /// character or bidi override. `mode: "gateway"` and the reasons the
    /// gateway assigns (`self`, `disconnect`) are the gateway's own.
    pub fn validate(&self) -> Result<(), String> {
        if self.text.trim().is_empty() {
            return Err("text must not be empty".into());
        }
        if self.text.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "text is {} bytes; at most {MAX_TEXT_BYTES} are allowed",
                self.text.len()
            ));
        }
        if self.text.chars().any(crate::safe_text::is_unsafe) {
            return Err("text must not contain control characters or bidi overrides".into());
        }
        check_not_reserved_mode("mode", self.mode.as_deref())?;
        if let Some(reason) = self.reason.as_deref() {
            if GATEWAY_REASONS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(reason.trim()))
            {
                return Err(format!(
                    "reason {reason:?} is assigned by the gateway, not sent by clients"
                ));
            }
        }
        for (name, value) in [
            ("instanceId", &self.instance_id),
            ("host", &self.host),
            ("ip", &self.ip),
            ("version", &self.version),
            ("platform", &self.platform),
            ("deviceFamily", &self.device_family),
            ("modelIdentifier", &self.model_identifier),
            ("mode", &self.mode),
            ("reason", &self.reason),
        ] {
            check_field(name, value.as_deref())?;
        }
        Ok(())
    }
}

/// `node.event` parameters. The payload travels as an object (`payload`) or
/// as its JSON text (`payloadJSON`, which wins when both are present).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEventParams {
    pub event: String,
    #[serde(
        rename = "payloadJSON",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub payload_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl NodeEventParams {
    /// The event's payload, decoded from `payloadJSON` or taken from `payload`.
    pub fn decoded_payload(&self) -> Result<Value, serde_json::Error> {
        match (&self.payload_json, &self.payload) {
            (Some(text), _) => serde_json::from_str(text),
            (None, Some(v)) => Ok(v.clone()),
            (None, None) => Ok(Value::Null),
        }
    }
}

/// `node.host.stats` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStats {
    pub cpu_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<[f64; 3]>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_available_bytes: Option<u64>,
}

impl HostStats {
    /// Checks the bounds OpenClaw documents: 1..=4096 CPUs, load averages
    /// finite in 0..=100000, free ≤ total, disk fields together.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.cpu_count) {
            return Err(format!("cpuCount {} is outside 1..=4096", self.cpu_count));
        }
        if let Some(load) = self.load_average {
            if load
                .iter()
                .any(|l| !l.is_finite() || *l < 0.0 || *l > 100_000.0)
            {
                return Err("loadAverage values must be finite and within 0..=100000".into());
            }
        }
        if self.memory_free_bytes > self.memory_total_bytes {
            return Err("memoryFreeBytes exceeds memoryTotalBytes".into());
        }
        match (self.disk_total_bytes, self.disk_available_bytes) {
            (Some(t), Some(a)) if a > t => Err("diskAvailableBytes exceeds diskTotalBytes".into()),
            (Some(_), None) | (None, Some(_)) => {
                Err("diskTotalBytes and diskAvailableBytes must appear together".into())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_vectors::wire;
    use crate::protocol::Frame;

    #[test]
    fn captured_presence_reply_parses_and_reserializes_without_nulls() {
        let Frame::Res(res) = Frame::parse(&wire("08-system-presence.res.json")).unwrap() else {
            panic!("not a response")
        };
        let list: Vec<PresenceEntry> = serde_json::from_value(res.payload.unwrap()).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].reason.as_deref(), Some("self"));
        assert_eq!(list[2].roles.as_deref(), Some(&["node".to_string()][..]));
        let text = serde_json::to_string(&list).unwrap();
        assert!(!text.contains("null"));
        assert!(!text.contains("lastInputSeconds"));
    }

    #[test]
    fn captured_host_stats_decode_from_payload_json() {
        let Frame::Req(req) = Frame::parse(&wire("04-node.event.host-stats.req.json")).unwrap()
        else {
            panic!("not a request")
        };
        let p: NodeEventParams = serde_json::from_value(req.params).unwrap();
        assert_eq!(p.event, "node.host.stats");
        let stats: HostStats = serde_json::from_value(p.decoded_payload().unwrap()).unwrap();
        assert_eq!(stats.cpu_count, 2);
        assert_eq!(stats.load_average, Some([0.56, 0.27, 0.12]));
        assert_eq!(stats.disk_total_bytes, Some(270553174016));
        stats.validate().unwrap();
    }

    #[test]
    fn payload_json_wins_over_payload() {
        let p: NodeEventParams =
            serde_json::from_str(r#"{"event":"x","payloadJSON":"{\"a\":1}","payload":{"a":2}}"#)
                .unwrap();
        assert_eq!(p.decoded_payload().unwrap()["a"], 1);
        let p: NodeEventParams =
            serde_json::from_str(r#"{"event":"x","payload":{"a":2}}"#).unwrap();
        assert_eq!(p.decoded_payload().unwrap()["a"], 2);
    }

    #[test]
    fn beacons_are_bounded() {
        let mut p = SystemEventParams {
            text: "Node: a".into(),
            ..Default::default()
        };
        p.validate().unwrap();
        p.text = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(p.validate().unwrap_err().contains("text"));
        p.text = " ".into();
        assert!(p.validate().is_err());
        p.text = "ok".into();
        p.host = Some("h".repeat(MAX_FIELD_BYTES + 1));
        assert!(p.validate().unwrap_err().contains("host"));
    }

    #[test]
    fn beacons_carry_no_control_characters_and_no_gateway_claims() {
        let beacon = |text: &str| SystemEventParams {
            text: text.into(),
            ..Default::default()
        };
        // Line breaks and tabs fold into spaces; anything else is refused.
        let p = beacon("line one\nline two\r\n\tend").normalized().unwrap();
        assert_eq!(p.text, "line one line two   end");
        for bad in [
            "\x1b]52;c;SGk=\x07",
            "a\0b",
            "\u{9b}2J",
            "bell\x07",
            "\u{202e}txt",
        ] {
            let err = beacon(bad).normalized().unwrap_err();
            assert!(err.contains("control characters"), "{bad:?}: {err}");
        }
        let mut p = beacon("ok");
        p.mode = Some(" Gateway".into());
        assert!(p.validate().unwrap_err().contains("reserved"));
        for reason in ["self", "disconnect", "SELF"] {
            let mut p = beacon("ok");
            p.reason = Some(reason.into());
            assert!(p
                .validate()
                .unwrap_err()
                .contains("assigned by the gateway"));
        }
        let mut p = beacon("ok");
        p.reason = Some("periodic".into());
        p.mode = Some("node".into());
        p.validate().unwrap();
        p.host = Some("web\u{202e}10".into());
        assert!(p.validate().unwrap_err().contains("host"));
    }

    #[test]
    fn host_stats_bounds() {
        let ok = HostStats {
            cpu_count: 2,
            load_average: Some([0.1, 0.2, 0.3]),
            memory_total_bytes: 10,
            memory_free_bytes: 5,
            disk_total_bytes: Some(10),
            disk_available_bytes: Some(1),
        };
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.cpu_count = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.memory_free_bytes = 11;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.load_average = Some([f64::NAN, 0.0, 0.0]);
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.disk_available_bytes = None;
        assert!(bad.validate().is_err());
    }
}
