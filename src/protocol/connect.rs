//! The handshake: `connect` request parameters and the `hello-ok` reply.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::payloads::PresenceEntry;

/// The role a connection asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Node,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Node, Role::Operator]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// `connect.params.client`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub version: String,
    pub platform: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_identifier: Option<String>,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

impl ClientInfo {
    /// Bounds every field (they become presence rows): at most
    /// [`MAX_FIELD_BYTES`](super::payloads::MAX_FIELD_BYTES) each; `id`,
    /// `version`, `platform` and `mode` non-empty.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("client.id", &self.id),
            ("client.version", &self.version),
            ("client.platform", &self.platform),
            ("client.mode", &self.mode),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        for (name, value) in [
            ("client.id", Some(&self.id)),
            ("client.displayName", self.display_name.as_ref()),
            ("client.version", Some(&self.version)),
            ("client.platform", Some(&self.platform)),
            ("client.deviceFamily", self.device_family.as_ref()),
            ("client.modelIdentifier", self.model_identifier.as_ref()),
            ("client.mode", Some(&self.mode)),
            ("client.instanceId", self.instance_id.as_ref()),
        ] {
            super::payloads::check_field(name, value.map(String::as_str))?;
        }
        super::payloads::check_not_reserved_mode("client.mode", Some(&self.mode))
    }
}

/// `connect.params.auth`: the shared gateway token and/or a device token
/// the gateway issued earlier. Never logged: `Debug` redacts both.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

impl std::fmt::Debug for ConnectAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectAuth")
            .field("token", &redact(&self.token))
            .field("device_token", &redact(&self.device_token))
            .finish()
    }
}

/// `connect.params.device`: the signed device identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProof {
    pub id: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: u64,
    pub nonce: String,
}

/// `connect.params`. Fields OpenClaw sends that we do not use (`pathEnv`,
/// `permissions`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectParams {
    pub min_protocol: u32,
    pub max_protocol: u32,
    pub client: ClientInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceProof>,
}

impl ConnectParams {
    /// Parameters for an operator connection with a shared token and no
    /// device identity (as OpenClaw's CLI connects).
    pub fn operator(client: ClientInfo, scopes: Vec<String>, token: Option<&str>) -> Self {
        ConnectParams {
            min_protocol: super::PROTOCOL_VERSION,
            max_protocol: super::PROTOCOL_VERSION,
            client,
            role: Some(Role::Operator),
            scopes,
            caps: Vec::new(),
            commands: Vec::new(),
            auth: Some(ConnectAuth {
                token: token.map(str::to_string),
                device_token: None,
            }),
            device: None,
        }
    }

    /// Reads `connect.params` as the gateway does. serde would also read a
    /// struct from a JSON array (fields by position), so the objects of the
    /// protocol (`params`, `client`, `auth`, `device`) are checked first.
    pub fn from_value(params: Value) -> Result<ConnectParams, String> {
        let nested = ["client", "auth", "device"].map(|k| (k, params.get(k)));
        if !params.is_object() {
            return Err("params must be an object".into());
        }
        for (name, value) in nested {
            if let Some(v) = value.filter(|v| !v.is_object() && !v.is_null()) {
                let kind = match v {
                    Value::Array(_) => "an array",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    _ => "a boolean",
                };
                return Err(format!("{name} must be an object, not {kind}"));
            }
        }
        serde_json::from_value(params).map_err(|e| e.to_string())
    }

    /// The role asked for; OpenClaw treats a missing role as operator.
    pub fn role(&self) -> Role {
        self.role.unwrap_or(Role::Operator)
    }

    pub fn token(&self) -> Option<&str> {
        self.auth.as_ref()?.token.as_deref()
    }

    /// `auth.deviceToken`: a device token the gateway issued earlier.
    pub fn device_token(&self) -> Option<&str> {
        self.auth.as_ref()?.device_token.as_deref()
    }

    /// The token the device signature covers: `auth.token`, else
    /// `auth.deviceToken` (as OpenClaw's clients sign and its gateway
    /// checks).
    pub fn signature_token(&self) -> Option<&str> {
        self.token().or(self.device_token())
    }
}

/// `hello-ok.server`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub version: String,
    pub conn_id: String,
}

/// `hello-ok.features`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `hello-ok.snapshot.stateVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateVersion {
    #[serde(default)]
    pub presence: u64,
    #[serde(default)]
    pub health: u64,
}

/// `hello-ok.snapshot`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    #[serde(default)]
    pub presence: Vec<PresenceEntry>,
    #[serde(default)]
    pub health: Value,
    #[serde(default)]
    pub state_version: StateVersion,
    #[serde(default)]
    pub uptime_ms: u64,
}

/// `hello-ok.auth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAuth {
    pub role: Role,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A per-device token issued after pairing (OpenClaw); clients keep it
    /// and may present it on reconnects (`connect.params.auth.deviceToken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    /// When `device_token` was issued (or last rotated), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<u64>,
}

/// `hello-ok.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub max_payload: u64,
    pub max_buffered_bytes: u64,
    pub tick_interval_ms: u64,
}

/// The `connect` response payload: `{type:"hello-ok", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", rename = "hello-ok")]
pub struct HelloOk {
    pub protocol: u32,
    pub server: ServerInfo,
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub snapshot: Snapshot,
    pub auth: HelloAuth,
    pub policy: Policy,
}

impl HelloOk {
    /// The `connect` response text, with `presence_json` (a JSON array, the
    /// store's cached list) as `snapshot.presence`: the gateway sends the
    /// list it already has as text instead of cloning and re-serializing
    /// every row for every handshake. `self.snapshot.presence` is left empty.
    pub fn response_text(&self, request_id: &str, presence_json: &str) -> String {
        match self.response_around_presence(request_id) {
            Some((head, tail)) => [head.as_str(), presence_json, tail.as_str()].concat(),
            None => {
                let payload = serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"));
                crate::protocol::Frame::ok_text(request_id, &payload)
            }
        }
    }

    /// [`HelloOk::response_text`] in two: the text before and after the
    /// value of `snapshot.presence`, for the gateway to send the list's
    /// pieces between them without copying it. `None` when
    /// `self.snapshot.presence` is not empty (the list is already in it).
    pub fn response_around_presence(&self, request_id: &str) -> Option<(String, String)> {
        // `type` and the other fields come before `snapshot`, whose first
        // field is `presence`; field names are never escaped and string
        // values always are, so this text occurs once, as that field.
        const EMPTY: &str = r#""snapshot":{"presence":[]"#;
        if !self.snapshot.presence.is_empty() {
            return None;
        }
        let payload = serde_json::to_string(self).ok()?;
        let at = payload.find(EMPTY)? + EMPTY.len() - "[]".len();
        let mut head = crate::protocol::Frame::ok_text_head(request_id);
        head.push_str(&payload[..at]);
        let mut tail = String::with_capacity(payload.len() - at);
        tail.push_str(&payload[at + "[]".len()..]);
        tail.push('}');
        Some((head, tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_vectors::wire;
    use crate::protocol::Frame;

    fn params_of(name: &str) -> ConnectParams {
        let Frame::Req(req) = Frame::parse(&wire(name)).unwrap() else {
            panic!("not a request")
        };
        serde_json::from_value(req.params).unwrap()
    }

    #[test]
    fn real_node_host_connect_parses() {
        let p = params_of("02-node-host.connect.req.json");
        assert_eq!(p.role(), Role::Node);
        assert_eq!(p.client.id, "node-host");
        assert_eq!(p.client.mode, "node");
        assert_eq!(p.client.display_name.as_deref(), Some("capnode"));
        assert_eq!(p.token(), Some("testtoken123"));
        let d = p.device.expect("device");
        assert_eq!(d.signed_at, 1795377499047);
    }

    #[test]
    fn real_cli_connect_parses() {
        let p = params_of("06-cli.connect.req.json");
        assert_eq!(p.role(), Role::Operator);
        assert_eq!(p.client.mode, "cli");
        assert_eq!(p.scopes, vec!["operator.read".to_string()]);
        assert!(p.device.is_none());
    }

    #[test]
    fn real_hello_ok_parses() {
        let Frame::Res(res) = Frame::parse(&wire("03-node-host.hello-ok.res.json")).unwrap() else {
            panic!("not a response")
        };
        let hello: HelloOk = serde_json::from_value(res.payload.unwrap()).unwrap();
        assert_eq!(hello.protocol, 4);
        assert_eq!(hello.policy.tick_interval_ms, 30_000);
        assert_eq!(hello.auth.role, Role::Node);
        assert_eq!(
            hello.auth.device_token.as_deref(),
            Some("M5Zeakcfao3AVXiwgNBEuhn3Hqcwye9wCpV8tgsRv_Y")
        );
        assert_eq!(hello.snapshot.state_version.presence, 9);
        assert!(hello
            .features
            .methods
            .iter()
            .any(|m| m == "system-presence"));
    }

    /// The spliced hello-ok is the hello-ok with that list, as a frame.
    #[test]
    fn hello_ok_response_text_carries_the_given_presence() {
        let Frame::Res(res) = Frame::parse(&wire("03-node-host.hello-ok.res.json")).unwrap() else {
            panic!("not a response")
        };
        let mut full: HelloOk = serde_json::from_value(res.payload.unwrap()).unwrap();
        for (n, host) in ["gw", "node-1", "mac \"studio\""].into_iter().enumerate() {
            full.snapshot.presence.push(PresenceEntry {
                host: Some(host.into()),
                ts: 1_000 - n as u64,
                ..PresenceEntry::default()
            });
        }
        let presence_json = serde_json::to_string(&full.snapshot.presence).unwrap();
        let mut empty = full.clone();
        empty.snapshot.presence.clear();
        // A string value that looks like the field is escaped, so the
        // splice still finds the field itself.
        empty.server.version = r#""snapshot":{"presence":[]"#.into();
        let mut expected = full.clone();
        expected.server.version = empty.server.version.clone();
        let text = empty.response_text("c-1", &presence_json);
        assert_eq!(Frame::parse(&text).unwrap(), Frame::ok("c-1", &expected));
        // Nothing to splice into: the hello-ok as it is.
        let text = full.response_text("c-2", "[]");
        assert_eq!(Frame::parse(&text).unwrap(), Frame::ok("c-2", &full));
    }

    #[test]
    fn hello_ok_serializes_with_its_type_tag() {
        let hello = HelloOk {
            protocol: 4,
            server: ServerInfo {
                version: "1".into(),
                conn_id: "c".into(),
            },
            features: Features::default(),
            snapshot: Snapshot::default(),
            auth: HelloAuth {
                role: Role::Operator,
                scopes: vec![],
                device_token: None,
                issued_at_ms: None,
            },
            policy: Policy {
                max_payload: 1,
                max_buffered_bytes: 2,
                tick_interval_ms: 3,
            },
        };
        let v = serde_json::to_value(&hello).unwrap();
        assert_eq!(v["type"], "hello-ok");
        assert_eq!(v["policy"]["tickIntervalMs"], 3);
        assert_eq!(v["server"]["connId"], "c");
    }

    #[test]
    fn client_fields_are_bounded() {
        let mut c = params_of("02-node-host.connect.req.json").client;
        c.validate().unwrap();
        c.display_name = Some("x".repeat(257));
        assert!(c.validate().unwrap_err().contains("client.displayName"));
        c.display_name = None;
        c.mode = " ".into();
        assert!(c.validate().unwrap_err().contains("client.mode"));
        c.mode = "gateway".into();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("reserved for the gateway"));
    }

    /// Found by tests/malformed.rs: `auth: []` was read as an empty auth
    /// object (serde reads structs from arrays), then refused as "token
    /// missing" instead of as a malformed request.
    #[test]
    fn protocol_objects_must_be_objects() {
        let Frame::Req(req) = Frame::parse(&wire("06-cli.connect.req.json")).unwrap() else {
            panic!("not a request")
        };
        assert!(ConnectParams::from_value(req.params.clone()).is_ok());
        for (key, value) in [
            ("auth", serde_json::json!([])),
            ("auth", serde_json::json!(["t"])),
            (
                "client",
                serde_json::json!(["cli", null, "1", "linux", null, null, "cli"]),
            ),
            ("device", serde_json::json!(["id", "k", "s", 1, "n"])),
            ("device", serde_json::json!("x")),
        ] {
            let mut p = req.params.clone();
            p[key] = value.clone();
            // serde alone takes the arrays.
            if value.is_array() {
                assert!(
                    serde_json::from_value::<ConnectParams>(p.clone()).is_ok(),
                    "{key}"
                );
            }
            let e = ConnectParams::from_value(p).unwrap_err();
            assert!(e.starts_with(&format!("{key} must be an object")), "{e}");
        }
        let mut p = req.params.clone();
        p["auth"] = Value::Null;
        assert_eq!(ConnectParams::from_value(p).unwrap().auth, None);
        let as_array = serde_json::json!([4, 4, req.params["client"].clone()]);
        assert_eq!(
            ConnectParams::from_value(as_array).unwrap_err(),
            "params must be an object"
        );
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let a = ConnectAuth {
            token: Some("s3cret".into()),
            device_token: Some("d3vice".into()),
        };
        assert!(!format!("{a:?}").contains("d3vice"));
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
