//! Frame envelopes: request, response and event.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::errors::ErrorShape;

/// Any frame on the wire, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Frame {
    Req(Request),
    Res(Response),
    Event(EventFrame),
}

/// `{type:"req", id, method, params}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub method: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// `{type:"res", id, ok, payload | error}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorShape>,
}

/// `{type:"event", event, payload, seq?, stateVersion?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFrame {
    pub event: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<Value>,
}

/// Why a text message is not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("invalid frame: {0}")]
    Shape(serde_json::Error),
}

/// A text message that is not a valid request: why, and the ids an answer
/// could be tied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The `id` of a text meant as a request (see [`Frame::request_id`]).
    pub request_id: Option<String>,
    /// Any non-empty string `id` of a JSON object, whatever its `type`.
    pub any_id: Option<String>,
    pub why: String,
}

impl Request {
    /// The one reading of a client's text message as a request, before and
    /// after `connect`: a JSON object (serde would read a frame from an
    /// array) of `type: "req"` with a non-empty string `id`. Otherwise why
    /// not, and the ids the text ties to. (An empty `method` is the
    /// caller's to judge: before `connect` it is "not connect".)
    pub fn parse(text: &str) -> Result<Request, BadRequest> {
        let bad = |why: String| {
            let any_id = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| match v.get("id") {
                    Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
                    _ => None,
                })
                .or_else(|| Frame::request_id(text))
                .filter(|id| !id.is_empty());
            BadRequest {
                request_id: Frame::request_id(text).filter(|id| !id.is_empty()),
                any_id,
                why,
            }
        };
        match Frame::parse(text) {
            Ok(Frame::Req(req)) if req.id.is_empty() => Err(bad("id must not be empty".into())),
            Ok(Frame::Req(req)) => Ok(req),
            Ok(_) => Err(bad("clients send only type \"req\" frames".into())),
            Err(FrameError::Json(e)) => Err(bad(format!("invalid JSON: {e}"))),
            Err(FrameError::Shape(e)) => Err(bad(e.to_string())),
        }
    }
}

impl Frame {
    /// Parses one text message. Distinguishes malformed JSON from JSON that
    /// is not a frame, so the peer gets an error it can act on.
    pub fn parse(text: &str) -> Result<Frame, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(FrameError::Json)?;
        // serde would also read a frame from an array (fields by position).
        if !value.is_object() {
            return Err(FrameError::Shape(serde::de::Error::custom(
                "a frame is a JSON object",
            )));
        }
        serde_json::from_value(value).map_err(FrameError::Shape)
    }

    /// The `id` of a text that is meant as a request but is not a valid
    /// frame (a field of the wrong type, a number out of range, a lone
    /// surrogate escape), so the error can be tied to it: the text must be
    /// a JSON object whose `id` is a string and whose `type`, if present,
    /// is `"req"`. Every other value is skipped unread, so it is found even
    /// where [`Frame::parse`] fails.
    pub fn request_id(text: &str) -> Option<String> {
        #[derive(Deserialize)]
        struct Envelope {
            #[serde(rename = "type", default)]
            kind: Option<String>,
            id: String,
        }
        // serde also reads a struct from an array: only objects count.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let envelope: Envelope = serde_json::from_str(text).ok()?;
        match envelope.kind.as_deref() {
            None | Some("req") => Some(envelope.id),
            Some(_) => None,
        }
    }

    /// Serializes to the JSON text sent on the wire.
    pub fn to_text(&self) -> String {
        // A Frame is built from plain data (strings, numbers, JSON values);
        // serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    pub fn request(id: impl Into<String>, method: &str, params: impl Serialize) -> Frame {
        Frame::Req(Request {
            id: id.into(),
            method: method.to_string(),
            params: to_value(params),
        })
    }

    pub fn ok(id: impl Into<String>, payload: impl Serialize) -> Frame {
        Frame::Res(Response {
            id: id.into(),
            ok: true,
            payload: Some(to_value(payload)),
            error: None,
        })
    }

    /// The text of a success response whose payload is JSON text made
    /// elsewhere (the presence list from the store's cache), spliced in
    /// without a `Value` in between. `payload_json` must be one JSON value.
    pub fn ok_text(id: &str, payload_json: &str) -> String {
        Frame::ok_text_with(id, payload_json.len(), |text| text.push_str(payload_json))
    }

    /// [`Frame::ok_text`] with the payload written by `write_payload` into
    /// the response's own buffer (`size_hint`: its expected length).
    pub fn ok_text_with(
        id: &str,
        size_hint: usize,
        write_payload: impl FnOnce(&mut String),
    ) -> String {
        let mut text = Frame::ok_text_head(id);
        text.reserve(size_hint + 1);
        write_payload(&mut text);
        text.push('}');
        text
    }

    /// A success response's text up to its payload (which the caller
    /// writes, then `}`): `{"type":"res","id":…,"ok":true,"payload":`.
    pub fn ok_text_head(id: &str) -> String {
        let id = serde_json::to_string(id).unwrap_or_else(|_| String::from("\"\""));
        let mut text = String::with_capacity(40 + id.len());
        text.push_str(r#"{"type":"res","id":"#);
        text.push_str(&id);
        text.push_str(r#","ok":true,"payload":"#);
        text
    }

    pub fn err(id: impl Into<String>, error: ErrorShape) -> Frame {
        Frame::Res(Response {
            id: id.into(),
            ok: false,
            payload: None,
            error: Some(error),
        })
    }

    pub fn event(event: &str, payload: impl Serialize) -> Frame {
        Frame::Event(EventFrame {
            event: event.to_string(),
            payload: to_value(payload),
            seq: None,
            state_version: None,
        })
    }
}

/// Converts our own payload types to JSON. They are plain serde structs with
/// string keys, so this cannot fail; `Null` is the defensive fallback.
pub(crate) fn to_value(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_vectors::wire;

    /// Found by the `frame` fuzz target on OpenClaw's own hello-ok: without
    /// correctly rounded float parsing, relaying a frame changed the last
    /// digit of `intervalMs`.
    #[test]
    fn floats_survive_a_round_trip_exactly() {
        let text = r#"{"type":"event","event":"x","payload":{"intervalMs":1014.8658505999989}}"#;
        let frame = Frame::parse(text).unwrap();
        assert_eq!(frame.to_text(), text);
        assert_eq!(Frame::parse(&frame.to_text()).unwrap(), frame);
    }

    #[test]
    fn parses_every_captured_frame() {
        for name in [
            "01-connect.challenge.event.json",
            "02-node-host.connect.req.json",
            "03-node-host.hello-ok.res.json",
            "04-node.event.host-stats.req.json",
            "05-tick.event.json",
            "06-cli.connect.req.json",
            "07-cli.system-presence.req.json",
            "08-system-presence.res.json",
        ] {
            let text = wire(name);
            Frame::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn frame_kinds_are_recognised() {
        let f = Frame::parse(&wire("05-tick.event.json")).unwrap();
        match f {
            Frame::Event(e) => {
                assert_eq!(e.event, "tick");
                assert_eq!(e.seq, Some(1));
            }
            other => panic!("expected event, got {other:?}"),
        }
        let f = Frame::parse(&wire("07-cli.system-presence.req.json")).unwrap();
        match f {
            Frame::Req(r) => assert_eq!(r.method, "system-presence"),
            other => panic!("expected req, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_and_wrong_shapes_are_told_apart() {
        assert!(matches!(Frame::parse("{nope"), Err(FrameError::Json(_))));
        assert!(matches!(
            Frame::parse(r#"{"type":"bogus"}"#),
            Err(FrameError::Shape(_))
        ));
        assert!(matches!(
            Frame::parse(r#"{"type":"req","method":"x"}"#),
            Err(FrameError::Shape(_))
        ));
        assert!(matches!(Frame::parse("[1,2]"), Err(FrameError::Shape(_))));
        // Found by tests/malformed.rs: serde read this array as a request.
        assert!(matches!(
            Frame::parse(r#"["req","a1","connect",{}]"#),
            Err(FrameError::Shape(_))
        ));
    }

    #[test]
    fn ok_text_is_the_response_frame() {
        for id in ["r1", "", "q\"uote\\ \u{1}", "ünï"] {
            let payload = r#"[{"ts":1,"host":"a"},{"ts":0}]"#;
            let text = Frame::ok_text(id, payload);
            let expected = Frame::ok(id, serde_json::from_str::<Value>(payload).unwrap());
            assert_eq!(Frame::parse(&text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn request_ids_are_found_in_invalid_requests() {
        for (text, id) in [
            (r#"{"type":"req","id":"a","method":7}"#, Some("a")),
            (r#"{"id":"b","method":"connect"}"#, Some("b")),
            (
                r#"{"type":"req","id":"c","params":{"minProtocol":1e400}}"#,
                Some("c"),
            ),
            (r#"{"type":"req","id":"d","method":"x\ud800"}"#, Some("d")),
            (r#"{"type":"req","id":"e","params":[[[[]]]]}"#, Some("e")),
            (r#"{"type":"req","id":5,"method":"connect"}"#, None),
            (r#"{"type":"event","id":"f"}"#, None),
            (r#"{"type":7,"id":"g"}"#, None),
            (r#"{"type":"req","method":"connect"}"#, None),
            (r#"["req","h"]"#, None),
            ("{nope", None),
        ] {
            assert_eq!(Frame::request_id(text).as_deref(), id, "{text}");
        }
        // What does not parse as a frame does not parse as JSON here either.
        assert!(Frame::parse(r#"{"type":"req","id":"c","method":"m","params":1e400}"#).is_err());
    }

    /// Found by `cargo fuzz run frame`: a 93-digit integer parsed to an f64
    /// one ULP off, so the frame we sent back was not the frame we read.
    #[test]
    fn long_numbers_survive_a_round_trip() {
        let digits = format!("1{}795377528473", "9".repeat(80));
        assert_eq!(digits.len(), 93);
        for number in [
            digits.as_str(),
            "1.9999999999999998e+92",
            "2e92",
            "0.30000000000000004",
            "-4.9406564584124654e-324",
            "1.7976931348623157e308",
        ] {
            let text = format!(r#"{{"type":"event","event":"tick","payload":{{"ts":{number}}}}}"#);
            let frame = Frame::parse(&text).unwrap();
            let again = Frame::parse(&frame.to_text()).unwrap();
            assert_eq!(again, frame, "{number}");
            let Frame::Event(e) = frame else {
                panic!("not an event")
            };
            let expected: f64 = number.parse().unwrap();
            assert_eq!(e.payload["ts"].as_f64(), Some(expected), "{number}");
        }
    }

    #[test]
    fn response_round_trip_omits_absent_fields() {
        let f = Frame::ok("7", serde_json::json!({"a": 1}));
        let text = f.to_text();
        assert_eq!(
            text,
            r#"{"type":"res","id":"7","ok":true,"payload":{"a":1}}"#
        );
        assert_eq!(Frame::parse(&text).unwrap(), f);
    }
}
