//! One connection's life: WebSocket upgrade, the `connect` handshake
//! (challenge, protocol, token, device signature), then requests and queued
//! events until the peer leaves, overflows its queue, or the gateway stops.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn, Instrument as _};

use super::admission::Ticket;
use super::broadcast::{event_text, Outbound, PRESENCE_EVENT_MIN_GAP};
use super::http;
use super::methods::{self, ConnContext};
use super::metrics::HandshakeResult;
use super::pins::PinCheck;
use super::state::{now_ms, ConnHandle, NodeRecord, Shared};
use super::SERVER_VERSION;
use crate::presence::{ConnectionInfo, PresenceKey};
use crate::protocol::connect::{Features, HelloAuth, Policy, ServerInfo, Snapshot, StateVersion};
use crate::protocol::device_auth::{self, Expected};
use crate::protocol::{
    event, method, ConnectChallenge, ConnectParams, ErrorCode, ErrorDetailCode, ErrorShape, Frame,
    HelloOk, Role, MIN_NODE_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::tls::ServerStream;

type Sink = SplitSink<WebSocketStream<ServerStream>, Message>;
type Source = SplitStream<WebSocketStream<ServerStream>>;

/// A write that takes longer than this means the peer stopped reading.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handshake ended without a session.
struct Rejection {
    /// The error response, when the peer sent a request it can be tied to.
    response: Option<Frame>,
    code: CloseCode,
    reason: String,
    /// The detail code (else the error code) sent, for the log.
    error_code: Option<String>,
    timed_out: bool,
}

impl Rejection {
    fn close(code: CloseCode, reason: impl Into<String>) -> Self {
        Rejection {
            response: None,
            code,
            reason: reason.into(),
            error_code: None,
            timed_out: false,
        }
    }

    fn reply(id: &str, error: ErrorShape, code: CloseCode) -> Self {
        let reason = error.message.clone();
        let error_code = error
            .detail_code_str()
            .unwrap_or(error.code.as_str())
            .to_string();
        Rejection {
            response: Some(Frame::err(id, error)),
            code,
            reason,
            error_code: Some(error_code),
            timed_out: false,
        }
    }
}

/// Runs one connection to completion.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    ticket: Ticket,
) {
    let conn_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("conn", conn_id = %conn_id, peer = %peer);
    serve_connection(stream, peer, conn_id, shared, stop, ticket)
        .instrument(span)
        .await
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    ticket: Ticket,
) {
    let config = &shared.config;
    let deadline = Instant::now() + config.handshake_timeout;
    // TLS (when configured) is part of the handshake and its deadline.
    let mut stream =
        match timeout_at(deadline, crate::tls::accept(stream, config.tls.as_ref())).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                return;
            }
        };
    // The request head: a WebSocket upgrade, or one of the plain pages.
    let rest = match timeout_at(deadline, http::read_request(&mut stream)).await {
        Ok(Ok(http::Request::Upgrade { accept_key, rest })) => {
            let answer = http::switching_protocols(&accept_key);
            let sent = timeout_at(deadline, stream.write_all(answer.as_bytes())).await;
            if !matches!(sent, Ok(Ok(()))) {
                debug!("WebSocket upgrade answer not sent");
                shared.metrics.handshake(HandshakeResult::Closed);
                return;
            }
            rest
        }
        Ok(Ok(http::Request::Plain(req))) => {
            drop(ticket);
            let stopping = *stop.borrow();
            http::serve(&mut stream, &req, &shared, stopping).await;
            return;
        }
        Ok(Err(bad)) => {
            debug!(reason = %bad.reason, "bad HTTP request");
            shared.metrics.handshake(HandshakeResult::Closed);
            http::refuse(&mut stream, bad).await;
            return;
        }
        Err(_) => {
            debug!("HTTP request timed out");
            shared.metrics.handshake(HandshakeResult::Timeout);
            return;
        }
    };
    let ws_config = crate::protocol::ws_config(Some(config.max_payload));
    let ws = WebSocketStream::from_partially_read(
        stream,
        rest,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(ws_config),
    )
    .await;
    let (mut sink, mut source) = ws.split();
    let remote_ip = canonical_ip(peer.ip());

    let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = Frame::event(
        event::CONNECT_CHALLENGE,
        ConnectChallenge {
            nonce: nonce.clone(),
            ts: now_ms(),
        },
    );
    if send_text(&mut sink, challenge.to_text()).await.is_err() {
        return;
    }

    let outcome = tokio::select! {
        // Boxed: its state lives only while it runs, not in every
        // connection's task for the connection's whole life.
        r = timeout_at(deadline, Box::pin(handshake(&mut source, &shared, &conn_id, &nonce, remote_ip))) => match r {
            Ok(outcome) => outcome,
            Err(_) => Err(Rejection {
                timed_out: true,
                ..Rejection::close(CloseCode::Policy, "handshake timeout")
            }),
        },
        _ = stop.changed() => Err(Rejection::close(CloseCode::Restart, "gateway stopping")),
    };
    // The handshake is over either way: its pre-auth slot is free again.
    drop(ticket);
    let accepted = match outcome {
        Ok(accepted) => {
            shared.metrics.handshake(HandshakeResult::Ok);
            accepted
        }
        Err(rejection) => {
            count_rejection(&shared, &rejection);
            info!(
                reason = %rejection.reason,
                error_code = rejection.error_code.as_deref().unwrap_or("-"),
                "handshake rejected"
            );
            if let Some(frame) = rejection.response {
                let _ = send_text(&mut sink, frame.to_text()).await;
            }
            close(&mut sink, rejection.code, &rejection.reason).await;
            return;
        }
    };

    let Accepted {
        ctx,
        hello,
        presence_json,
        request_id,
        rx,
        presence_rx,
        kill,
    } = accepted;
    info!(
        role = ctx.role.as_str(),
        mode = %ctx.client.mode,
        client = %ctx.client.id,
        protocol = hello.protocol,
        instance_id = ctx.client.instance_id.as_deref().unwrap_or("-"),
        "connected"
    );
    let hello_text = hello.response_text(&request_id, &presence_json);
    drop(presence_json);
    let sent = send_text(&mut sink, hello_text).await;
    if ctx.presence_key.is_some() {
        shared.lock().presence_changed();
    }
    if sent.is_ok() {
        let queues = Queues {
            events: rx,
            presence: presence_rx,
            kill: &kill,
        };
        session(&mut sink, &mut source, &shared, &ctx, queues, &mut stop).await;
    }

    // Cleanup: the row stays with reason "disconnect" until the TTL takes it.
    let mut state = shared.lock();
    state.connections.remove(&ctx.conn_id);
    state.nodes.remove(&ctx.conn_id);
    if let Some(key) = &ctx.presence_key {
        if state.presence.disconnect(key, now_ms()) {
            state.presence_changed();
        }
    }
    drop(state);
    info!("disconnected");
}

/// Counts a failed handshake by result, and auth failures by code.
fn count_rejection(shared: &Shared, rejection: &Rejection) {
    let auth_code = rejection.error_code.as_deref().and_then(|code| {
        ErrorDetailCode::ALL
            .into_iter()
            .find(|c| c.is_auth_failure() && c.as_str() == code)
    });
    let result = if let Some(code) = auth_code {
        shared.metrics.auth_failure(code);
        HandshakeResult::AuthFailed
    } else if rejection.timed_out {
        HandshakeResult::Timeout
    } else if rejection.response.is_none()
        && matches!(rejection.code, CloseCode::Normal | CloseCode::Restart)
    {
        HandshakeResult::Closed
    } else {
        HandshakeResult::Rejected
    };
    shared.metrics.handshake(result);
}

/// A successful handshake.
struct Accepted {
    ctx: ConnContext,
    /// The hello-ok, its `snapshot.presence` left empty: it is sent with
    /// `presence_json` spliced in ([`HelloOk::response_text`]).
    hello: HelloOk,
    /// The presence list as JSON text (`[]` for clients that do not read
    /// presence, as OpenClaw projects it).
    presence_json: String,
    request_id: String,
    rx: mpsc::Receiver<Arc<Outbound>>,
    /// Presence changes, for clients that read presence.
    presence_rx: Option<watch::Receiver<u64>>,
    kill: Arc<Notify>,
}

/// What a connected session is sent through.
struct Queues<'a> {
    /// Queued events: `tick`, `shutdown`.
    events: mpsc::Receiver<Arc<Outbound>>,
    /// The presence version (see `broadcast.rs`).
    presence: Option<watch::Receiver<u64>>,
    /// Notified when the event queue overflowed.
    kill: &'a Notify,
}

/// Reads the first frame and decides. On success the connection is
/// registered (presence row, node record, broadcast queue) before returning.
async fn handshake(
    source: &mut Source,
    shared: &Shared,
    conn_id: &str,
    nonce: &str,
    remote_ip: IpAddr,
) -> Result<Accepted, Rejection> {
    let config = &shared.config;
    let text = loop {
        match source.next().await {
            Some(Ok(Message::Text(t))) => break t,
            Some(Ok(Message::Binary(_))) => {
                return Err(Rejection::close(
                    CloseCode::Policy,
                    "invalid request frame: binary frames are not supported",
                ))
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(Rejection::close(CloseCode::Normal, "closed before connect"))
            }
            Some(Ok(_)) => continue, // ping/pong
            Some(Err(e)) => {
                let (code, reason) =
                    read_error_close(&e).unwrap_or_else(|| (CloseCode::Protocol, e.to_string()));
                return Err(Rejection::close(code, reason));
            }
        }
    };
    if text.len() > config.max_preauth_payload {
        return Err(Rejection::close(
            CloseCode::Size,
            format!(
                "frame of {} bytes exceeds the {} byte limit before connect",
                text.len(),
                config.max_preauth_payload
            ),
        ));
    }
    let req = match Frame::parse(&text) {
        Ok(Frame::Req(req)) => req,
        // A request we cannot read but can tie to its id is answered.
        Err(e) => {
            return Err(match Frame::request_id(&text) {
                Some(id) => Rejection::reply(
                    &id,
                    ErrorShape::invalid_request(format!("invalid request frame: {e}")),
                    CloseCode::Policy,
                ),
                None => Rejection::close(CloseCode::Policy, "invalid request frame"),
            })
        }
        Ok(_) => return Err(Rejection::close(CloseCode::Policy, "invalid request frame")),
    };
    let policy_reply = |e: ErrorShape| Rejection::reply(&req.id, e, CloseCode::Policy);
    if req.method != method::CONNECT {
        return Err(policy_reply(ErrorShape::invalid_request(
            "invalid handshake: first request must be connect",
        )));
    }
    let params = ConnectParams::from_value(req.params.clone()).map_err(|e| {
        policy_reply(ErrorShape::invalid_request(format!(
            "invalid connect params: {e}"
        )))
    })?;
    params.client.validate().map_err(|e| {
        policy_reply(ErrorShape::invalid_request(format!(
            "invalid connect params: {e}"
        )))
    })?;
    let role = params.role();

    let protocol = negotiate(&params).ok_or_else(|| {
        Rejection::reply(
            &req.id,
            ErrorShape::invalid_request(format!(
                "protocol mismatch: this gateway speaks {PROTOCOL_VERSION} (and {MIN_NODE_PROTOCOL_VERSION} for nodes), client offered {}..{}",
                params.min_protocol, params.max_protocol
            ))
            .with_detail(ErrorDetailCode::ProtocolMismatch),
            CloseCode::Protocol,
        )
    })?;

    let now = now_ms();
    if let Some(expected) = &config.token {
        let mut state = shared.lock();
        if let Some(retry_after) = state.auth_retry_after(remote_ip, now) {
            return Err(policy_reply(
                ErrorShape::invalid_request("unauthorized: too many failed attempts; retry later")
                    .with_detail(ErrorDetailCode::AuthRateLimited)
                    .with_retry_after(retry_after),
            ));
        }
        let failure = match params.token() {
            None | Some("") => Some((
                ErrorDetailCode::AuthTokenMissing,
                "unauthorized: gateway token missing (configure the client's token)",
            )),
            Some(given) if !tokens_match(given, expected.expose()) => Some((
                ErrorDetailCode::AuthTokenMismatch,
                "unauthorized: gateway token mismatch",
            )),
            Some(_) => None,
        };
        if let Some((detail, message)) = failure {
            state.record_auth_failure(remote_ip, now);
            return Err(policy_reply(
                ErrorShape::invalid_request(message).with_detail(detail),
            ));
        }
    }

    let device_id = match &params.device {
        None if role == Role::Node => {
            return Err(policy_reply(
                ErrorShape::new(ErrorCode::NotPaired, "device identity required")
                    .with_detail(ErrorDetailCode::DeviceIdentityRequired),
            ))
        }
        None => None,
        Some(device) => {
            let expected = Expected::for_connect(&params, nonce, now);
            device_auth::verify(device, &expected).map_err(|e| {
                policy_reply(ErrorShape::invalid_request(e.message).with_detail(e.code))
            })?;
            Some(device.id.clone())
        }
    };

    let instance_id = params.client.instance_id.as_deref();
    match shared.pins.check(
        instance_id,
        device_id.as_deref(),
        params.client.display_name.as_deref(),
        now,
    ) {
        PinCheck::Conflict(pin) => {
            let id = instance_id.unwrap_or_default();
            return Err(policy_reply(
                ErrorShape::invalid_request(format!(
                    "instance id {id} is pinned to another device key ({}, first seen{}); if this host \
                     was re-imaged, run `clawnode forget {id}` on the gateway host",
                    short(&pin.device_id),
                    pin.display_name.map(|n| format!(" as {n}")).unwrap_or_default(),
                ))
                .with_detail(ErrorDetailCode::InstanceIdPinned),
            ));
        }
        PinCheck::New => info!(
            instance_id,
            device_id = device_id.as_deref().unwrap_or("-"),
            "instance id pinned to its device key"
        ),
        PinCheck::Known | PinCheck::Unpinned => {}
    }

    // Nodes get no operator scopes; operators get what they asked for (the
    // shared token is full trust, as in OpenClaw).
    let scopes = match role {
        Role::Node => Vec::new(),
        Role::Operator => params.scopes.clone(),
    };
    let remote = (!crate::presence::is_loopback(remote_ip)).then_some(remote_ip);
    let own_key = PresenceKey::for_connection(
        params.client.instance_id.as_deref(),
        device_id.as_deref(),
        conn_id,
    );
    let (tx, rx) = mpsc::channel(config.send_queue);
    let kill = Arc::new(Notify::new());

    let mut state = shared.lock();
    let presence_key = state.presence.connect(
        &ConnectionInfo {
            conn_id,
            client: &params.client,
            role,
            scopes: &scopes,
            device_id: device_id.as_deref(),
            remote_ip: Some(remote_ip),
        },
        now,
    );
    if role == Role::Node {
        state.nodes.insert(
            conn_id.to_string(),
            NodeRecord {
                node_id: device_id.clone().unwrap_or_else(|| conn_id.to_string()),
                instance_id: params.client.instance_id.clone(),
                display_name: params.client.display_name.clone(),
                platform: params.client.platform.clone(),
                version: params.client.version.clone(),
                device_family: params.client.device_family.clone(),
                model_identifier: params.client.model_identifier.clone(),
                remote_ip: remote,
                caps: params.caps.clone(),
                commands: params.commands.clone(),
                connected_at_ms: now,
                host_stats: None,
            },
        );
    }
    state.connections.insert(
        conn_id.to_string(),
        ConnHandle {
            role,
            tx,
            kill: kill.clone(),
        },
    );
    // Subscribed under the same lock as the snapshot is taken: every later
    // change is seen.
    let reads_presence = methods::reads_presence(role, &scopes);
    let presence_rx = reads_presence.then(|| state.presence_changes.subscribe());
    let presence_json = if reads_presence {
        state.presence.list_json(now)
    } else {
        String::from("[]")
    };
    let snapshot = Snapshot {
        presence: Vec::new(),
        health: serde_json::json!({ "ok": true, "ts": now }),
        state_version: StateVersion {
            presence: state.presence_version,
            health: 1,
        },
        uptime_ms: shared.uptime_ms(),
    };
    drop(state);

    let hello = HelloOk {
        protocol,
        server: ServerInfo {
            version: SERVER_VERSION.to_string(),
            conn_id: conn_id.to_string(),
        },
        features: Features {
            methods: methods::METHODS.iter().map(|m| m.to_string()).collect(),
            events: [
                event::CONNECT_CHALLENGE,
                event::PRESENCE,
                event::TICK,
                event::SHUTDOWN,
            ]
            .iter()
            .map(|e| e.to_string())
            .collect(),
        },
        snapshot,
        auth: HelloAuth {
            role,
            scopes: scopes.clone(),
            device_token: None,
        },
        policy: Policy {
            max_payload: config.max_payload as u64,
            max_buffered_bytes: (config.send_queue * config.max_payload) as u64,
            tick_interval_ms: config.tick_interval.as_millis() as u64,
        },
    };
    Ok(Accepted {
        ctx: ConnContext {
            conn_id: conn_id.to_string(),
            role,
            scopes,
            client: params.client,
            device_id,
            own_key,
            presence_key,
            remote_ip: remote,
        },
        hello,
        presence_json,
        request_id: req.id,
        rx,
        presence_rx,
        kill,
    })
}

/// Picks the protocol version: 4 when the client's range allows it, 3 for
/// nodes that only speak 3, otherwise none.
fn negotiate(params: &ConnectParams) -> Option<u32> {
    let offers = |v: u32| params.min_protocol <= v && v <= params.max_protocol;
    if offers(PROTOCOL_VERSION) {
        Some(PROTOCOL_VERSION)
    } else if params.role() == Role::Node && offers(MIN_NODE_PROTOCOL_VERSION) {
        Some(MIN_NODE_PROTOCOL_VERSION)
    } else {
        None
    }
}

/// Compares tokens through their digests, so timing says nothing about
/// how much of the token was right.
pub(super) fn tokens_match(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The first 12 characters of a device id, for messages.
fn short(device_id: &str) -> &str {
    device_id.get(..12).unwrap_or(device_id)
}

/// IPv4-mapped IPv6 addresses are shown as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The connected phase.
async fn session(
    sink: &mut Sink,
    source: &mut Source,
    shared: &Shared,
    ctx: &ConnContext,
    queues: Queues<'_>,
    stop: &mut watch::Receiver<bool>,
) {
    let Queues {
        events: mut rx,
        presence: mut presence_rx,
        kill,
    } = queues;
    let mut seq: u64 = 0;
    // A presence change seen and not yet sent: when it may be sent.
    let mut presence_due: Option<Instant> = None;
    let mut last_presence: Option<Instant> = None;
    // A peer that vanished without a FIN (power loss, partition) is found by
    // the kernel: we ping every tick, and the listener set TCP_USER_TIMEOUT
    // to two ticks, so data left unacknowledged that long fails the socket
    // (ETIMEDOUT). A live client that is merely busy still acknowledges at
    // the TCP level and is not dropped (a full queue is handled apart).
    let tick = shared.config.tick_interval;
    let mut liveness = tokio::time::interval_at(Instant::now() + tick, tick);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = source.next() => {
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let reply = methods::handle_text(shared, ctx, &text);
                        if send_text(sink, reply).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) => {
                        // Send the reply tungstenite queued, so the peer sees a
                        // completed close handshake rather than 1006.
                        let _ = timeout(Duration::from_secs(1), sink.close()).await;
                        return;
                    }
                    None => return,
                    Some(Ok(Message::Binary(_))) => {
                        let error = ErrorShape::invalid_request("invalid request frame: binary frames are not supported; send JSON text");
                        if send_text(sink, Frame::err("invalid", error).to_text()).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {} // ping/pong
                    Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
                        info!("peer unreachable: pings unacknowledged for two ticks; dropping the connection");
                        return;
                    }
                    Some(Err(e)) => {
                        // A peer that broke the protocol is told why (RFC 6455
                        // 7.1.7); one that is gone is not.
                        match read_error_close(&e) {
                            Some((code, reason)) => {
                                warn!(error = %e, "closing: {reason}");
                                close(sink, code, &reason).await;
                            }
                            None => debug!(error = %e, "read failed"),
                        }
                        return;
                    }
                }
            },
            Some(out) = rx.recv() => {
                seq += 1;
                if send_text(sink, event_text(&out, seq)).await.is_err() {
                    return;
                }
            }
            changed = presence_changed(&mut presence_rx), if presence_due.is_none() => {
                if changed {
                    let now = Instant::now();
                    presence_due = Some(match last_presence {
                        Some(last) => now.max(last + PRESENCE_EVENT_MIN_GAP),
                        None => now,
                    });
                } else {
                    presence_rx = None;
                }
            }
            _ = sleep_until_some(presence_due) => {
                presence_due = None;
                last_presence = Some(Instant::now());
                if let Some(rx) = &mut presence_rx {
                    rx.borrow_and_update();
                }
                // The list as it is now: every change up to here in one event.
                let out = shared.lock().presence_event();
                seq += 1;
                if send_text(sink, event_text(&out, seq)).await.is_err() {
                    return;
                }
            }
            _ = liveness.tick() => {
                if send_message(sink, Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            _ = kill.notified() => {
                close(sink, CloseCode::Policy, "slow consumer: send queue overflow").await;
                return;
            }
            _ = stop.changed() => {
                // Deliver what is queued (the `shutdown` event) first.
                while let Ok(out) = rx.try_recv() {
                    seq += 1;
                    if send_text(sink, event_text(&out, seq)).await.is_err() {
                        return;
                    }
                }
                close(sink, CloseCode::Restart, "gateway stopping").await;
                return;
            }
        }
    }
}

/// Waits for a presence change: `true`, or `false` once the sender is gone.
/// Without a receiver (a client that does not read presence) it never ends.
async fn presence_changed(rx: &mut Option<watch::Receiver<u64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Sleeps until `due`; never ends for `None`.
async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The close frame for a read error the peer caused (an oversized frame,
/// invalid UTF-8, a protocol violation); `None` when the connection is gone.
fn read_error_close(e: &WsError) -> Option<(CloseCode, String)> {
    match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "frame too large".into())),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8 in a text frame".into())),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(p) => Some((CloseCode::Protocol, p.to_string())),
        _ => None,
    }
}

async fn send_text(sink: &mut Sink, text: String) -> Result<(), ()> {
    send_message(sink, Message::text(text)).await
}

async fn send_message(sink: &mut Sink, message: Message) -> Result<(), ()> {
    match timeout(WRITE_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "write failed");
            Err(())
        }
        Err(_) => {
            warn!("write timed out; dropping connection");
            Err(())
        }
    }
}

async fn close(sink: &mut Sink, code: CloseCode, reason: &str) {
    // Close reasons are limited to 123 bytes by RFC 6455.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].to_string().into(),
    };
    let _ = timeout(
        Duration::from_secs(2),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
    let _ = timeout(Duration::from_secs(1), sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ClientInfo;

    fn params(role: Role, min: u32, max: u32) -> ConnectParams {
        ConnectParams {
            min_protocol: min,
            max_protocol: max,
            client: ClientInfo {
                id: "x".into(),
                display_name: None,
                version: "1".into(),
                platform: "linux".into(),
                device_family: None,
                model_identifier: None,
                mode: "node".into(),
                instance_id: None,
            },
            role: Some(role),
            scopes: vec![],
            caps: vec![],
            commands: vec![],
            auth: None,
            device: None,
        }
    }

    #[test]
    fn protocol_negotiation() {
        assert_eq!(negotiate(&params(Role::Operator, 3, 4)), Some(4));
        assert_eq!(negotiate(&params(Role::Operator, 4, 9)), Some(4));
        assert_eq!(negotiate(&params(Role::Operator, 3, 3)), None);
        assert_eq!(negotiate(&params(Role::Node, 3, 3)), Some(3));
        assert_eq!(negotiate(&params(Role::Node, 5, 6)), None);
        assert_eq!(negotiate(&params(Role::Node, 1, 2)), None);
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", "abc"));
    }

    #[test]
    fn mapped_addresses_become_v4() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }
}
