//! One connection's life: connect, answer the challenge with a signed
//! `connect`, then beacons, host stats and the tick watchdog until the
//! connection ends or we are asked to stop.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::device_token::DeviceTokenStore;
use super::AgentConfig;
use crate::client::handshake::{self, HandshakeError};
use crate::config::Secret;
use crate::host::{HostFacts, HostStatsSampler};
use crate::identity::DeviceIdentity;
use crate::protocol::device_auth::DeviceAuthPayload;
use crate::protocol::{
    event, method, mode, ClientInfo, ConnectAuth, ConnectChallenge, ConnectParams, DeviceProof,
    ErrorCode, ErrorShape, Frame, HelloOk, NodeEventParams, Role, SystemEventParams,
    MIN_NODE_PROTOCOL_VERSION, NODE_CLIENT_ID, PROTOCOL_VERSION,
};
use crate::service::{ServiceNotifier, WatchdogTimer};

/// How long to wait for the TCP+WebSocket connect, the challenge, and hello-ok.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay for host stats the gateway could not take yet
/// (OpenClaw: `UNAVAILABLE`/`PAIRING_CHANGED` until the node is approved);
/// it doubles up to the stats interval.
const STATS_RETRY: Duration = Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested; the close frame has been sent.
    Shutdown,
    /// The connection failed or closed; `after_hello` says whether it had
    /// been established.
    Lost { reason: String, after_hello: bool },
    /// The gateway refused the `connect`.
    Rejected(ErrorShape),
}

/// What outlives one session.
#[derive(Debug, Default)]
pub struct SessionMemory {
    /// The gateway refused beacons for role node; don't send more.
    pub beacons_refused: bool,
    /// We already said that host stats are not accepted yet.
    pub stats_refusal_logged: bool,
    /// We already told the operator to approve this device's pairing.
    pub pairing_logged: bool,
}

/// What the agent authenticates with: the shared gateway token and/or a
/// device token the gateway issued earlier (see [`super::device_token`]).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub shared: Option<Secret>,
    pub device_token: Option<Secret>,
}

impl Credentials {
    /// The token the device signature covers: the shared one if any, else
    /// the device token (as OpenClaw's clients sign).
    fn signed_token(&self) -> Option<&str> {
        self.shared
            .as_ref()
            .or(self.device_token.as_ref())
            .map(Secret::expose)
    }
}

/// What we sent and are waiting to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Beacon,
    Stats,
}

/// Inputs of one session.
pub struct SessionInputs<'a> {
    pub config: &'a AgentConfig,
    pub identity: &'a DeviceIdentity,
    pub facts: &'a HostFacts,
    pub credentials: &'a Credentials,
    pub device_tokens: &'a DeviceTokenStore,
    pub sampler: &'a mut HostStatsSampler,
    pub memory: &'a mut SessionMemory,
    /// systemd: READY=1 and status on hello-ok, watchdog pings.
    pub notifier: &'a ServiceNotifier,
    pub watchdog: &'a mut WatchdogTimer,
}

/// The display name: the configured one, else the system host name.
pub fn display_name<'a>(config: &'a AgentConfig, facts: &'a HostFacts) -> &'a str {
    config.display_name.as_deref().unwrap_or(&facts.hostname)
}

/// Builds the signed `connect` parameters for a challenge.
pub fn connect_params(
    config: &AgentConfig,
    identity: &DeviceIdentity,
    facts: &HostFacts,
    credentials: &Credentials,
    challenge: &ConnectChallenge,
) -> ConnectParams {
    let client = node_client(identity, display_name(config, facts), facts);
    signed_node_connect(identity, client, credentials, challenge)
}

/// `connect.params.client` of a node with these host facts.
pub fn node_client(identity: &DeviceIdentity, display_name: &str, facts: &HostFacts) -> ClientInfo {
    ClientInfo {
        id: NODE_CLIENT_ID.to_string(),
        display_name: Some(display_name.to_string()),
        version: crate::VERSION.to_string(),
        platform: facts.platform.clone(),
        device_family: Some(facts.device_family.clone()),
        model_identifier: Some(facts.model_identifier.clone()),
        mode: mode::NODE.to_string(),
        instance_id: Some(identity.instance_id().to_string()),
    }
}

/// The `connect` parameters of `role: node` with `client`, signed by
/// `identity` over the challenge (the v3 payload).
pub fn signed_node_connect(
    identity: &DeviceIdentity,
    client: ClientInfo,
    credentials: &Credentials,
    challenge: &ConnectChallenge,
) -> ConnectParams {
    let signature = identity.sign(&DeviceAuthPayload {
        device_id: identity.device_id(),
        client_id: &client.id,
        client_mode: &client.mode,
        role: Role::Node.as_str(),
        scopes: &[],
        signed_at_ms: challenge.ts,
        token: credentials.signed_token(),
        nonce: &challenge.nonce,
        platform: Some(&client.platform),
        device_family: client.device_family.as_deref(),
    });
    ConnectParams {
        min_protocol: MIN_NODE_PROTOCOL_VERSION,
        max_protocol: PROTOCOL_VERSION,
        client,
        role: Some(Role::Node),
        scopes: Vec::new(),
        caps: Vec::new(),
        commands: Vec::new(),
        auth: Some(ConnectAuth {
            token: credentials.shared.as_ref().map(|t| t.expose().to_string()),
            device_token: credentials
                .device_token
                .as_ref()
                .map(|t| t.expose().to_string()),
        }),
        device: Some(DeviceProof {
            id: identity.device_id().to_string(),
            public_key: identity.public_key().to_string(),
            signature,
            signed_at: challenge.ts,
            nonce: challenge.nonce.clone(),
        }),
    }
}

/// The beacon: fields for the row, and the text OpenClaw's parser reads.
pub fn beacon(
    config: &AgentConfig,
    identity: &DeviceIdentity,
    facts: &HostFacts,
    last_input_seconds: Option<u64>,
) -> SystemEventParams {
    node_beacon(
        identity,
        display_name(config, facts),
        facts,
        last_input_seconds,
    )
}

/// The beacon of a node shown as `host` with these host facts.
pub fn node_beacon(
    identity: &DeviceIdentity,
    host: &str,
    facts: &HostFacts,
    last_input_seconds: Option<u64>,
) -> SystemEventParams {
    let mut text = format!("Node: {host}");
    if let Some(ip) = facts.ip {
        text.push_str(&format!(" ({ip})"));
    }
    text.push_str(&format!(" · app {}", crate::VERSION));
    if let Some(n) = last_input_seconds {
        text.push_str(&format!(" · last input {n}s ago"));
    }
    text.push_str(" · mode node · reason periodic");
    SystemEventParams {
        text,
        instance_id: Some(identity.instance_id().to_string()),
        host: Some(host.to_string()),
        ip: facts.ip.map(|ip| ip.to_string()),
        version: Some(crate::VERSION.to_string()),
        platform: Some(facts.platform.clone()),
        device_family: Some(facts.device_family.clone()),
        model_identifier: Some(facts.model_identifier.clone()),
        mode: Some(mode::NODE.to_string()),
        last_input_seconds,
        reason: Some("periodic".to_string()),
    }
}

/// Is this the gateway saying "nodes may not send beacons"?
fn is_role_refusal(e: &ErrorShape) -> bool {
    e.code == ErrorCode::Forbidden || e.message.contains("unauthorized role")
}

/// Runs one session to its end.
pub async fn run(
    inputs: SessionInputs<'_>,
    shutdown: &mut crate::shutdown::Shutdown,
) -> SessionEnd {
    let lost = |reason: String| SessionEnd::Lost {
        reason,
        after_hello: false,
    };
    let url = &inputs.config.url;
    // Rebuilt every attempt, so new system CAs are picked up.
    let connector = match crate::tls::client_connector(url, &inputs.config.tls) {
        Ok(c) => c,
        Err(e) => return lost(format!("{e:#}")),
    };
    let mut ws = tokio::select! {
        r = timeout(HANDSHAKE_TIMEOUT, handshake::open(url, Some(connector))) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                return lost(crate::tls::describe_connect_error(&e).unwrap_or_else(|| describe_ws_error(&e)));
            }
            Err(_) => return lost("connect timed out".into()),
        },
        _ = shutdown.wait() => return SessionEnd::Shutdown,
    };
    let mut next_id: u64 = 0;
    let mut new_id = move || {
        next_id += 1;
        format!("{next_id}:{}", uuid::Uuid::new_v4())
    };

    // Handshake: challenge -> connect -> hello-ok, under one deadline,
    // answering the watchdog meanwhile.
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let connect_id = new_id();
    let answer = {
        let handshake = handshake::handshake(&mut ws, &connect_id, deadline, |challenge| {
            connect_params(
                inputs.config,
                inputs.identity,
                inputs.facts,
                inputs.credentials,
                challenge,
            )
        });
        tokio::pin!(handshake);
        loop {
            tokio::select! {
                r = &mut handshake => break Some(r),
                _ = inputs.watchdog.tick() => inputs.notifier.watchdog(),
                _ = shutdown.wait() => break None,
            }
        }
    };
    let hello: HelloOk = match answer {
        None => {
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
            return SessionEnd::Shutdown;
        }
        Some(Err(HandshakeError::Refused(error))) => return SessionEnd::Rejected(error),
        Some(Err(e)) => return lost(describe_handshake_error(&e)),
        Some(Ok(None)) => return lost("hello-ok without payload".into()),
        Some(Ok(Some(payload))) => match serde_json::from_value(payload) {
            Ok(h) => h,
            Err(e) => return lost(format!("invalid hello-ok: {e}")),
        },
    };
    let (mut sink, mut source) = ws.split();

    if let Some(token) = &hello.auth.device_token {
        inputs.device_tokens.remember(
            url,
            inputs.identity.device_id(),
            Role::Node.as_str(),
            token,
            &hello.auth.scopes,
        );
    }
    let tick = Duration::from_millis(hello.policy.tick_interval_ms.max(1000));
    let silence_limit = tick * 2;
    let connected = format!("connected to {url} as {}", inputs.identity.instance_id());
    info!(
        conn_id = %hello.server.conn_id,
        protocol = hello.protocol,
        "{connected}"
    );
    inputs.notifier.ready(&connected);

    let ended = |reason: String| SessionEnd::Lost {
        reason,
        after_hello: true,
    };
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut last_heard = Instant::now();
    let now = Instant::now();
    let mut next_beacon = now;
    let mut next_stats = now;
    let mut stats_retry = STATS_RETRY;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        let beacon_at = if inputs.memory.beacons_refused {
            far()
        } else {
            next_beacon
        };
        tokio::select! {
            msg = source.next() => {
                last_heard = Instant::now();
                let text = match msg {
                    None => return ended("connection closed".into()),
                    Some(Err(e)) => return ended(describe_ws_error(&e)),
                    Some(Ok(Message::Close(frame))) => return ended(describe_close(frame.as_ref())),
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                match Frame::parse(&text) {
                    Ok(Frame::Res(res)) => match (pending.remove(&res.id), res.error) {
                        (Some(Pending::Beacon), Some(e)) if is_role_refusal(&e) => {
                            info!(error = %e, "gateway does not accept presence beacons from nodes; not sending more");
                            inputs.memory.beacons_refused = true;
                        }
                        (Some(Pending::Stats), Some(e)) if e.retryable == Some(true) || e.code == ErrorCode::Unavailable => {
                            if !inputs.memory.stats_refusal_logged {
                                inputs.memory.stats_refusal_logged = true;
                                info!(error = %e, "host stats not accepted yet; retrying (on OpenClaw, see `openclaw nodes pending` / `openclaw nodes approve`)");
                            } else {
                                debug!(error = %e, "host stats not accepted yet");
                            }
                            next_stats = Instant::now() + stats_retry;
                            stats_retry = (stats_retry * 2).min(inputs.config.tuning.stats_interval);
                        }
                        (Some(Pending::Stats), None) => {
                            if stats_retry != STATS_RETRY {
                                info!("host stats accepted");
                            }
                            stats_retry = STATS_RETRY;
                            inputs.memory.stats_refusal_logged = false;
                        }
                        (Some(kind), Some(e)) => warn!(error = %e, "{kind:?} refused by gateway"),
                        _ => {}
                    },
                    Ok(Frame::Event(ev)) if ev.event == event::SHUTDOWN => {
                        let reason = ev.payload.get("reason").and_then(|r| r.as_str()).unwrap_or("shutdown").to_string();
                        return ended(format!("gateway shutting down: {reason}"));
                    }
                    Ok(Frame::Event(_)) => {}
                    Ok(Frame::Req(req)) => {
                        let reply = Frame::err(&req.id, ErrorShape::invalid_request(format!("unsupported method: {}", req.method)));
                        if let Err(e) = sink.send(Message::text(reply.to_text())).await {
                            return ended(describe_ws_error(&e));
                        }
                    }
                    Err(e) => debug!(error = %e, "ignoring invalid frame"),
                }
            }
            _ = sleep_until(beacon_at) => {
                let params = beacon(inputs.config, inputs.identity, inputs.facts, crate::host::last_input_seconds(std::time::SystemTime::now()));
                let id = new_id();
                pending.insert(id.clone(), Pending::Beacon);
                if let Err(e) = sink.send(Message::text(Frame::request(id, method::SYSTEM_EVENT, params).to_text())).await {
                    return ended(describe_ws_error(&e));
                }
                next_beacon = Instant::now() + inputs.config.tuning.beacon_interval;
            }
            _ = sleep_until(next_stats) => {
                let stats = inputs.sampler.sample();
                let params = NodeEventParams {
                    event: event::NODE_HOST_STATS.to_string(),
                    payload_json: Some(serde_json::to_string(&stats).unwrap_or_default()),
                    payload: None,
                };
                let id = new_id();
                pending.insert(id.clone(), Pending::Stats);
                if let Err(e) = sink.send(Message::text(Frame::request(id, method::NODE_EVENT, params).to_text())).await {
                    return ended(describe_ws_error(&e));
                }
                next_stats = Instant::now() + inputs.config.tuning.stats_interval;
            }
            _ = inputs.watchdog.tick() => inputs.notifier.watchdog(),
            _ = sleep_until(last_heard + silence_limit) => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "tick timeout".into() }))).await;
                return ended(format!("gateway silent for {}s (tick timeout)", silence_limit.as_secs()));
            }
            _ = shutdown.wait() => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "agent stopping".into() };
                let _ = timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
                // Give the gateway a moment to echo the close.
                let _ = timeout(Duration::from_millis(500), async {
                    while let Some(Ok(m)) = source.next().await {
                        if m.is_close() { break; }
                    }
                }).await;
                return SessionEnd::Shutdown;
            }
        }
        // Bound the pending map if a gateway never answers.
        if pending.len() > 64 {
            pending.clear();
        }
    }
}

/// A short human reason for a failed handshake (a refusal is not one: it
/// ends the session as [`SessionEnd::Rejected`]).
fn describe_handshake_error(e: &HandshakeError) -> String {
    match e {
        HandshakeError::Open(e) | HandshakeError::Ws(e) => describe_ws_error(e),
        HandshakeError::Closed(frame) => describe_close(frame.as_ref()),
        // Timeout, end of stream, invalid frame or challenge, refusals.
        other => other.to_string(),
    }
}

fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => {
            format!("closed by gateway ({}): {}", u16::from(f.code), f.reason)
        }
        Some(f) => format!("closed by gateway ({})", u16::from(f.code)),
        None => "closed by gateway".into(),
    }
}

/// A short human reason for a WebSocket error ("connection refused", ...).
fn describe_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            _ => io.to_string(),
        },
        Error::Http(resp) => crate::client::handshake::describe_http_refusal(resp),
        Error::ConnectionClosed | Error::AlreadyClosed => "connection closed".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::device_auth::{self, Expected, PayloadVersion};

    fn facts() -> HostFacts {
        HostFacts {
            hostname: "web-1".into(),
            ip: Some("192.0.2.10".parse().unwrap()),
            platform: "linux 6.1.0-18-amd64".into(),
            device_family: "Linux".into(),
            model_identifier: "PowerEdge R650".into(),
        }
    }

    /// What the gateway checks: the proof verifies (v3) over the same
    /// fields the gateway reads back from the connect parameters.
    #[test]
    fn the_signed_connect_verifies_as_the_gateway_checks_it() {
        let identity = DeviceIdentity::ephemeral("0b6e2f8c-34c1-4f7e-9a55-6d1f3c0a9e21");
        let challenge = ConnectChallenge {
            nonce: "bm9uY2U".into(),
            ts: 1_800_000_000_000,
        };
        let credentials = Credentials {
            shared: Some(Secret::new("fleet-token")),
            device_token: None,
        };
        let client = node_client(&identity, "web-1", &facts());
        let params = signed_node_connect(&identity, client, &credentials, &challenge);
        assert_eq!(params.role, Some(Role::Node));
        assert_eq!(
            params.client.instance_id.as_deref(),
            Some(identity.instance_id())
        );
        assert_eq!(
            params.client.model_identifier.as_deref(),
            Some("PowerEdge R650")
        );
        let proof = params.device.as_ref().unwrap();
        let expected = Expected::for_connect(&params, &challenge.nonce, challenge.ts + 1_000);
        assert_eq!(
            device_auth::verify(proof, &expected),
            Ok(PayloadVersion::V3)
        );
        // A different token (or nonce) is a different payload.
        let mut wrong = expected.clone();
        wrong.token = Some("another-token");
        assert!(device_auth::verify(proof, &wrong).is_err());
    }

    #[test]
    fn the_beacon_names_the_host_and_its_address() {
        let identity = DeviceIdentity::ephemeral("0b6e2f8c-34c1-4f7e-9a55-6d1f3c0a9e21");
        let b = node_beacon(&identity, "web-1", &facts(), Some(42));
        assert_eq!(
            b.text,
            format!(
                "Node: web-1 (192.0.2.10) · app {} · last input 42s ago · mode node · reason periodic",
                crate::VERSION
            )
        );
        assert_eq!(b.ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(b.last_input_seconds, Some(42));
    }
}
