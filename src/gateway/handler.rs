//! One connection's life: TLS and the HTTP request head (a WebSocket
//! upgrade, or one of the plain pages of [`super::http`]), the challenge,
//! the `connect` handshake (decided by [`super::auth`]), registration in the
//! [`Shared`] state, then the session — requests answered by
//! [`super::methods`], queued events, presence changes, pings — until the
//! peer leaves, overflows its queue, or the gateway stops; then it is
//! unregistered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::stream::SplitStream;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit};
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn, Instrument as _};

use super::admission::Ticket;
use super::auth::{self, AuthInput, ConnectRequest, JoinTokenLookup, Rejection};
use super::broadcast::{Outbound, PRESENCE_EVENT_MIN_GAP};
use super::connection::{read_error_close, Connection, Gone};
use super::http;
use super::log_summary::{Decision, Kind};
use super::methods::{self, ConnContext};
use super::metrics::HandshakeResult;
use super::outgoing::Outgoing;
use super::pairing;
use super::preauth;
use super::registry::{token_digest, ClaimCheck, ClaimToken, Device, DeviceState};
use super::state::Admit;
use super::state::{new_device_token, Registration, Shared};
use super::SERVER_VERSION;
use crate::clock::now_ms;
use crate::presence::{ConnectionInfo, ListJson, PresenceKey};
use crate::protocol::connect::{Features, HelloAuth, Policy, ServerInfo, Snapshot, StateVersion};
use crate::protocol::{event, ConnectChallenge, ErrorShape, Frame, HelloOk};
use crate::tls::ServerStream;

/// How long a closing connection waits for the peer's close frame.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

type Source = SplitStream<WebSocketStream<ServerStream>>;

/// `SO_SNDBUF` of every connection (the kernel doubles it for its own
/// bookkeeping, and turns its autotuning off): what the kernel may hold
/// queued for one client. Without it a client that does not read had
/// ~2.5 MB queued in the gateway's kernel (docs/RELIABILITY.md); with it a
/// reading client still gets ~1 MB/s at 100 ms of round trip, far more
/// than presence needs.
pub const SEND_BUFFER: usize = 64 * 1024;

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
    let deadline = Instant::now() + config.settings.tuning.handshake_timeout;
    let remote_ip = auth::canonical_ip(peer.ip());
    // The kernel's send buffer, capped: its autotuning lets one socket
    // queue megabytes for a peer that does not read.
    if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
        debug!(error = %e, "SO_SNDBUF not set");
    }
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
    let rest = match timeout_at(deadline, http::read_request(&mut stream, &config.site)).await {
        Ok(Ok(http::Request::Upgrade {
            accept_key, rest, ..
        })) => {
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
            debug!(reason = %bad.reason, status = bad.status, "bad HTTP request");
            shared.metrics.handshake(HandshakeResult::Closed);
            if let Some(status) = bad.status {
                let reason = format!("answered {status}");
                shared
                    .log_summary
                    .record(Kind::BadRequest, reason, remote_ip);
            }
            http::refuse(&mut stream, bad, &shared).await;
            return;
        }
        Err(_) => {
            debug!("HTTP request timed out");
            shared.metrics.handshake(HandshakeResult::Timeout);
            shared
                .log_summary
                .record(Kind::BadRequest, "request head timeout", remote_ip);
            return;
        }
    };
    let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = Frame::event(
        event::CONNECT_CHALLENGE,
        ConnectChallenge {
            nonce: nonce.clone(),
            ts: now_ms(),
        },
    );
    // The challenge and the first message are the pre-auth module's, under
    // the pre-auth limit; tungstenite takes the socket after them.
    let sent = timeout_at(
        deadline,
        preauth::send_text(&mut stream, challenge.to_text()),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        debug!("connect.challenge not sent");
        shared.metrics.handshake(HandshakeResult::Closed);
        return;
    }
    let limit = config.max_preauth_payload;
    let first = tokio::select! {
        // Boxed: its state lives only while it runs, not in every
        // connection's task for the connection's whole life.
        r = timeout_at(deadline, Box::pin(preauth::read_first_text(&mut stream, rest, limit))) => {
            r.unwrap_or_else(|_| Err(Rejection::timed_out()))
        }
        _ = stop.changed() => Err(Rejection::closed(CloseCode::Restart, "gateway stopping")),
    };
    let (first, leftover) = match first {
        Ok(first) => (Ok(first.text), first.leftover),
        Err(rejection) => (Err(rejection), Vec::new()),
    };
    let ws_config = crate::protocol::ws_config(Some(config.max_payload));
    let ws = WebSocketStream::from_partially_read(
        stream,
        leftover,
        tokio_tungstenite::tungstenite::protocol::Role::Server,
        Some(ws_config),
    )
    .await;
    let (sink, source) = ws.split();
    let mut conn = Connection::new(sink, config.settings.tuning.write_timeout);
    let outcome = match first {
        // The decision may wait for the device registry's commit of a new
        // pin: still under the handshake deadline, and the gateway's stop.
        Ok(text) => tokio::select! {
            r = timeout_at(deadline, Box::pin(handshake(&text, &shared, &conn_id, &nonce, remote_ip))) => {
                r.unwrap_or_else(|_| Err(Rejection::timed_out()))
            }
            _ = stop.changed() => Err(Rejection::closed(CloseCode::Restart, "gateway stopping")),
        },
        Err(rejection) => Err(rejection),
    };
    // The handshake is over either way: its pre-auth slot is free again.
    drop(ticket);
    let accepted = match outcome {
        Ok(accepted) => {
            shared.metrics.handshake(HandshakeResult::Ok);
            accepted
        }
        Err(rejection) => {
            shared.metrics.handshake(rejection.result);
            if let (HandshakeResult::AuthFailed, Some(code)) = (rejection.result, rejection.detail)
            {
                shared.metrics.auth_failure(code);
            }
            // What the peer sent may be in the reason: the log escapes it.
            debug!(
                reason = %rejection.reason,
                error_code = rejection.log_code(),
                "handshake rejected"
            );
            shared
                .log_summary
                .record(Kind::Handshake, rejection.summary_reason(), remote_ip);
            if let Some(frame) = rejection.response {
                let _ = conn.send_text(frame.to_text()).await;
            }
            conn.close(rejection.close, &rejection.reason).await;
            return;
        }
    };

    let Accepted {
        ctx,
        protocol,
        hello,
        events,
        presence,
        kill,
        replaced,
        revoked,
        token_changed,
    } = accepted;
    info!(
        role = ctx.role.as_str(),
        mode = %ctx.client.mode,
        client = %ctx.client.id,
        protocol,
        instance_id = ctx.client.instance_id.as_deref().unwrap_or("-"),
        credential = ctx.credential.as_str(),
        "connected"
    );
    if conn.send_message(&hello).await.is_ok() {
        let handler = Handler {
            conn,
            source,
            shared: &shared,
            ctx: &ctx,
            peer: remote_ip,
            events,
            presence,
            kill: &kill,
            replaced: &replaced,
            revoked: &revoked,
            token_changed: &token_changed,
        };
        handler.run(&mut stop).await;
    }
    shared.unregister(&ctx.conn_id, ctx.presence_key.as_ref());
    info!("disconnected");
}

/// A successful handshake: the connection is registered.
struct Accepted {
    ctx: ConnContext,
    /// The protocol version both speak.
    protocol: u32,
    /// The whole hello-ok response, its snapshot's presence list (the
    /// store's pieces) between its head and tail.
    hello: Outgoing,
    events: mpsc::Receiver<Arc<Outbound>>,
    presence: Option<watch::Receiver<u64>>,
    kill: Arc<Notify>,
    replaced: Arc<Notify>,
    revoked: Arc<Notify>,
    token_changed: Arc<Notify>,
}

/// Decides on the first message ([`auth::parse_connect`],
/// [`auth::authorize`], the instance pin). On success the connection is
/// registered before returning.
async fn handshake(
    text: &str,
    shared: &Shared,
    conn_id: &str,
    nonce: &str,
    remote_ip: IpAddr,
) -> Result<Accepted, Rejection> {
    let config = &shared.config;
    let req = auth::parse_connect(text, config.max_preauth_payload)?;
    let now = now_ms();
    let admitted = {
        let input = AuthInput {
            nonce,
            now_ms: now,
            token: config.token.as_ref(),
            operator_token: config.operator_token.as_ref(),
            operator_token_hint: &config.operator_token_hint,
            rate_limited_for_ms: shared.auth_retry_after(remote_ip, now),
            known_device: &|device_id| shared.is_known_device(device_id),
            join_token: &|sha256| match shared.join_token(sha256) {
                Ok(Some(token)) => JoinTokenLookup::Found(token),
                Ok(None) => JoinTokenLookup::NotFound,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "device registry unavailable; refusing the connection");
                    JoinTokenLookup::Unavailable
                }
            },
            device_token: &|device_id, role| shared.device_token(device_id, role),
        };
        auth::authorize(&req, &input).inspect_err(|rejection| {
            if rejection.counts_against_rate_limit() {
                shared.record_auth_failure(remote_ip, now);
            }
        })?
    };
    let params = &req.params;
    let own_key = PresenceKey::for_connection(
        params.client.instance_id.as_deref(),
        admitted.device_id.as_deref(),
        conn_id,
    );
    let revocations = shared.revocations();
    let issued = claim(shared, &req, &admitted, &own_key, remote_ip).await?;
    let device_token = match issued {
        Some(issued) => Some(issued),
        None => device_token(shared, &req, &admitted).await,
    };

    let registered = shared.register(Registration {
        conn: ConnectionInfo {
            conn_id,
            client: &params.client,
            role: admitted.role,
            scopes: &admitted.scopes,
            device_id: admitted.device_id.as_deref(),
            remote_ip: Some(remote_ip),
        },
        own_key: &own_key,
        caps: &params.caps,
        commands: &params.commands,
    });
    // Revoked (or its token rotated or revoked) between its admission and
    // its registration: the sweep that closed the device's connections may
    // have missed this one.
    if let Some(device_id) = &admitted.device_id {
        if shared.revocations() != revocations {
            if shared.is_refused(device_id) {
                shared.unregister(conn_id, registered.presence_key.as_ref());
                return Err(pairing::device_refused(
                    &req,
                    device_id,
                    super::registry::DeviceState::Revoked,
                ));
            }
            if admitted.credential == auth::Credential::DeviceToken
                && !device_token_still_valid(shared, &req, device_id, admitted.role)
            {
                shared.unregister(conn_id, registered.presence_key.as_ref());
                return Err(auth::device_token_retired(&req));
            }
        }
    }
    if let Some(id) = admitted.credential.join_token_id() {
        shared.join_token_used(id);
    }
    let hello = hello_ok(
        shared,
        conn_id,
        &admitted,
        device_token,
        registered.presence_version,
        now,
    );
    let hello = hello_response(&hello, &req.id, registered.presence_json);
    let ConnectRequest { params, .. } = req;
    Ok(Accepted {
        ctx: ConnContext {
            conn_id: conn_id.to_string(),
            role: admitted.role,
            scopes: admitted.scopes,
            client: params.client,
            device_id: admitted.device_id,
            credential: admitted.credential,
            own_key,
            presence_key: registered.presence_key,
            remote_ip: (!crate::presence::is_loopback(remote_ip)).then_some(remote_ip),
        },
        protocol: admitted.protocol,
        hello,
        events: registered.events,
        presence: registered.presence,
        kill: registered.kill,
        replaced: registered.replaced,
        revoked: registered.revoked,
        token_changed: registered.token_changed,
    })
}

/// Whether the device token `req` was let in with is still the device's
/// valid one (read again).
fn device_token_still_valid(
    shared: &Shared,
    req: &ConnectRequest,
    device_id: &str,
    role: crate::protocol::Role,
) -> bool {
    let presented = auth::device_token_candidate(&req.params).map(|(token, _)| token);
    matches!(
        (shared.device_token(device_id, role), presented),
        (Ok(Some(record)), Some(token)) if record.matches(token)
    )
}

/// The device token `hello-ok` carries: the one the device presented when
/// it is still valid (kept), else — let in by the join or the operator
/// token — a new one for its role, stored (as a SHA-256) before the answer,
/// which replaces any earlier one. A client without a device, or without
/// auth, gets none. A new device's is issued with its claim ([`claim`]);
/// this issues a known device's. A registry that cannot store it costs a
/// known device its token, not its connection (logged).
async fn device_token(
    shared: &Shared,
    req: &ConnectRequest,
    admitted: &auth::Admitted,
) -> Option<(String, u64)> {
    let device_id = admitted.device_id.as_deref()?;
    if let Some(kept) = kept_device_token(req, admitted) {
        return Some(kept);
    }
    if !admitted.credential.issues_device_token() {
        return None;
    }
    match shared
        .issue_device_token(device_id, admitted.role, &admitted.scopes)
        .await
    {
        Ok(Some((token, record))) => {
            debug!(
                device_id,
                role = admitted.role.as_str(),
                "device token issued"
            );
            Some((token, record.issued_at_ms))
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %format!("{e:#}"), device_id, "cannot store a device token; none issued");
            None
        }
    }
}

/// The device token the device presented and was let in with (or beside
/// a shared token), still valid: `hello-ok` carries it again.
fn kept_device_token(req: &ConnectRequest, admitted: &auth::Admitted) -> Option<(String, u64)> {
    let issued = admitted.device_token_issued_at_ms?;
    // Let in by it (from `auth.deviceToken`, else `auth.token`), or by a
    // shared token with it in `auth.deviceToken`.
    let presented = match admitted.credential {
        auth::Credential::DeviceToken => auth::device_token_candidate(&req.params).map(|(t, _)| t),
        _ => req.params.device_token(),
    };
    presented.map(|t| (t.to_string(), issued))
}

/// The connection's presence key is pinned to the first device that
/// claimed it (a device's own id is its own); a client without a device
/// claims nothing (its row is unclaimed: `PresenceKey::for_connection`).
/// A new device let in by a credential that issues device tokens is issued
/// its first one with the claim: its record, pin and token are stored in
/// one commit before `hello-ok`, and a refused claim stores no token. That
/// token and its issue time, when issued.
async fn claim(
    shared: &Shared,
    req: &ConnectRequest,
    admitted: &auth::Admitted,
    own_key: &PresenceKey,
    remote_ip: IpAddr,
) -> Result<Option<(String, u64)>, Rejection> {
    let (Some(device_id), Some(proof)) = (&admitted.device_id, &req.params.device) else {
        return Ok(None);
    };
    let device = Device {
        id: device_id.clone(),
        public_key: proof.public_key.clone(),
        role: Some(admitted.role),
        address: Some(remote_ip),
        display_name: req.params.client.display_name.clone(),
        join_token: admitted.credential.join_token_id().map(str::to_string),
    };
    let first_use = admit(shared, req, &device)?;
    let issued = (first_use.is_some()
        && own_key.is_claimable()
        && admitted.credential.issues_device_token()
        && kept_device_token(req, admitted).is_none())
    .then(new_device_token);
    let claim_token = issued.as_deref().map(|t| ClaimToken {
        role: admitted.role,
        sha256: token_digest(t),
        scopes: admitted.scopes.clone(),
    });
    let role = admitted.role.as_str();
    let join_token = device.join_token.clone();
    let join_token_id = join_token.as_deref().unwrap_or("-");
    let now = now_ms();
    match shared.claim(own_key, device, claim_token, now).await {
        Ok(ClaimCheck::Conflict(pin)) => Err(auth::pinned_elsewhere(req, own_key, &pin)),
        Ok(ClaimCheck::JoinTokenRefused(token)) => Err(match token {
            Some(token) => auth::join_token_refused(&req.id, &token, now_ms()),
            None => Rejection::reply(
                &req.id,
                ErrorShape::invalid_request("unauthorized: gateway token mismatch")
                    .with_detail(crate::protocol::ErrorDetailCode::AuthTokenMismatch),
                CloseCode::Policy,
            ),
        }),
        Ok(check) => {
            let pinned = (check == ClaimCheck::New).then(|| own_key.as_str());
            let summary = &shared.log_summary;
            // Values are recorded as strings: escaped by every log format.
            if let Some(policy) = first_use {
                if summary.decision(Decision::FirstUse, device_id, remote_ip) {
                    info!(
                        device_id = device_id.as_str(),
                        address = %remote_ip,
                        role,
                        policy,
                        instance_id = pinned.unwrap_or("-"),
                        join_token_id,
                        "device approved on first use"
                    );
                }
            } else if let Some(instance_id) = pinned {
                if summary.decision(Decision::Pinned, device_id, remote_ip) {
                    info!(
                        instance_id,
                        device_id = device_id.as_str(),
                        address = %remote_ip,
                        join_token_id,
                        "instance id pinned to its device key"
                    );
                }
            }
            if issued.is_some() {
                debug!(device_id = device_id.as_str(), role, "device token issued");
            }
            Ok(issued.map(|t| (t, now)))
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "device registry unavailable; refusing the connection");
            Err(auth::registry_unavailable(req))
        }
    }
}

/// Admission (`[gateway] admission`, the device's stored state): a device
/// an operator rejected or revoked is refused; a new node device waits for
/// approval under `manual`. `Some(policy)`: a new device, approved now by
/// `policy` (logged once its claim is stored). Decisions are logged with the
/// device id and address, one by one up to [`super::log_summary::DECISION_LINES`]
/// an interval per decision, the rest summed up (a waiting device's
/// retries at debug).
fn admit(
    shared: &Shared,
    req: &ConnectRequest,
    device: &Device,
) -> Result<Option<&'static str>, Rejection> {
    let address = device.address.map(|a| a.to_string()).unwrap_or_default();
    let id = device.id.as_str();
    let source = device
        .address
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let decided = |decision: Decision| shared.log_summary.decision(decision, id, source);
    match shared.admit(device) {
        Ok(Admit::Approved) => Ok(None),
        Ok(Admit::FirstUse(policy)) => Ok(Some(policy)),
        Ok(Admit::Pending { request_id, new }) => {
            shared.metrics.admission("pending");
            if !new {
                debug!(
                    device_id = id,
                    address, request_id, "device still waiting for approval"
                );
            } else if decided(Decision::Pending) {
                info!(
                    device_id = id,
                    address, request_id, "new device waiting for approval"
                );
            }
            Err(pairing::pairing_required(req, id, &request_id))
        }
        Ok(Admit::QueueFull) => {
            shared.metrics.admission("queue_full");
            if decided(Decision::QueueFull) {
                info!(
                    device_id = id,
                    address, "new device refused: the pairing queue is full"
                );
            }
            Err(pairing::queue_full(req))
        }
        Ok(Admit::Refused(state)) => {
            shared.metrics.admission(state.as_str());
            let decision = match state {
                DeviceState::Rejected => Decision::Rejected,
                _ => Decision::Revoked,
            };
            if decided(decision) {
                info!(
                    device_id = id,
                    address,
                    state = state.as_str(),
                    "device refused: an operator {} it",
                    state.as_str()
                );
            }
            Err(pairing::device_refused(req, id, state))
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "device registry unavailable; refusing the connection");
            Err(auth::registry_unavailable(req))
        }
    }
}

/// The hello-ok response: its text around `snapshot.presence`
/// ([`HelloOk::response_around_presence`]) and the list's pieces between.
fn hello_response(hello: &HelloOk, id: &str, list: ListJson) -> Outgoing {
    match hello.response_around_presence(id) {
        Some((head, tail)) => {
            let mut message = Outgoing::from(head);
            message.push_list(list);
            message.push_text(tail);
            message
        }
        None => Outgoing::from(hello.response_text(id, &list.to_text())),
    }
}

/// The hello-ok, its `snapshot.presence` left empty: it is sent with the
/// list's pieces in it ([`hello_response`]).
fn hello_ok(
    shared: &Shared,
    conn_id: &str,
    admitted: &auth::Admitted,
    device_token: Option<(String, u64)>,
    presence_version: u64,
    now: u64,
) -> HelloOk {
    let (device_token, issued_at_ms) = device_token.unzip();
    let config = &shared.config;
    HelloOk {
        protocol: admitted.protocol,
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
        snapshot: Snapshot {
            presence: Vec::new(),
            health: serde_json::json!({ "ok": true, "ts": now }),
            state_version: StateVersion {
                presence: presence_version,
                health: 1,
            },
            uptime_ms: shared.uptime_ms(),
        },
        auth: HelloAuth {
            role: admitted.role,
            scopes: admitted.scopes.clone(),
            device_token,
            issued_at_ms,
        },
        policy: Policy {
            max_payload: config.max_payload as u64,
            max_buffered_bytes: (config.send_queue * config.max_payload) as u64,
            tick_interval_ms: config.settings.tuning.tick_interval.as_millis() as u64,
        },
    }
}

/// A connected client's session: its socket, who it is, and what it is
/// sent through.
struct Handler<'a> {
    conn: Connection,
    source: Source,
    shared: &'a Shared,
    ctx: &'a ConnContext,
    /// The peer's address (also for loopback peers, which `ctx` leaves out).
    peer: IpAddr,
    /// Queued events: `tick`, `shutdown`.
    events: mpsc::Receiver<Arc<Outbound>>,
    /// Presence changes, for clients that read presence.
    presence: Option<watch::Receiver<u64>>,
    /// Notified when the event queue overflowed.
    kill: &'a Notify,
    /// Notified when a newer connection of its device or row replaced it.
    replaced: &'a Notify,
    /// Notified when its device was revoked, rejected or removed.
    revoked: &'a Notify,
    /// Notified when its device token was rotated or revoked.
    token_changed: &'a Notify,
}

impl Handler<'_> {
    /// Until the peer leaves, the queue overflows or the gateway stops.
    async fn run(mut self, stop: &mut watch::Receiver<bool>) {
        // Whatever ended the session, the connection is over.
        let _ = self.serve(stop).await;
    }

    async fn serve(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Gone> {
        // A presence change seen and not yet sent: when it may be sent.
        let mut presence_due: Option<Instant> = None;
        let mut last_presence: Option<Instant> = None;
        // A peer that vanished without a FIN (power loss, partition) is
        // found by the kernel: we ping every tick, and the listener set
        // TCP_USER_TIMEOUT to two ticks, so data left unacknowledged that
        // long fails the socket (ETIMEDOUT). A live client that is merely
        // busy still acknowledges at the TCP level and is not dropped (a
        // full queue is handled apart).
        let tick = self.shared.config.settings.tuning.tick_interval;
        let mut liveness = tokio::time::interval_at(Instant::now() + tick, tick);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = self.source.next() => self.inbound(msg).await?,
                Some(out) = self.events.recv() => self.conn.send_event(&out).await?,
                changed = presence_changed(&mut self.presence), if presence_due.is_none() => {
                    if changed {
                        let now = Instant::now();
                        presence_due = Some(match last_presence {
                            Some(last) => now.max(last + PRESENCE_EVENT_MIN_GAP),
                            None => now,
                        });
                    } else {
                        self.presence = None;
                    }
                }
                _ = sleep_until_some(presence_due) => {
                    presence_due = None;
                    last_presence = Some(Instant::now());
                    if let Some(rx) = &mut self.presence {
                        rx.borrow_and_update();
                    }
                    // The list as it is now: every change up to here in one event.
                    let out = self.shared.presence_event();
                    self.conn.send_event(&out).await?;
                }
                _ = liveness.tick() => self.conn.ping().await?,
                _ = self.kill.notified() => {
                    self.conn.close(CloseCode::Policy, "slow consumer: send queue overflow").await;
                    return Err(Gone);
                }
                _ = self.replaced.notified() => {
                    let bound = self.shared.config.settings.tuning.max_connections_per_device;
                    let reason = super::auth::replaced_reason(bound);
                    debug!(reason, "closing: replaced");
                    self.conn.close(CloseCode::Policy, &reason).await;
                    return Err(Gone);
                }
                _ = self.revoked.notified() => {
                    debug!("closing: device revoked");
                    self.conn.close(CloseCode::Policy, "device revoked by an operator").await;
                    return Err(Gone);
                }
                _ = self.token_changed.notified() => {
                    debug!("closing: device token rotated or revoked");
                    let reason = "device token rotated or revoked by an operator; reconnect with \
                                  the gateway token to be issued a new one";
                    self.conn.close(CloseCode::Policy, reason).await;
                    return Err(Gone);
                }
                _ = stop.changed() => {
                    // Deliver what is queued (the `shutdown` event) first.
                    while let Ok(out) = self.events.try_recv() {
                        self.conn.send_event(&out).await?;
                    }
                    self.conn.close(CloseCode::Restart, "gateway stopping").await;
                    linger(&mut self.source).await;
                    return Err(Gone);
                }
            }
        }
    }

    /// One inbound message: a request is answered; the peer's close, a
    /// read error or the end of the stream ends the session.
    async fn inbound(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), Gone> {
        match msg {
            Some(Ok(Message::Text(text))) => {
                let reply = methods::handle_text(self.shared, self.ctx, &text);
                self.conn.send_message(&reply).await
            }
            Some(Ok(Message::Close(_))) => {
                self.conn.finish().await;
                Err(Gone)
            }
            None => Err(Gone),
            Some(Ok(Message::Binary(_))) => {
                let error = ErrorShape::invalid_request(
                    "invalid request frame: binary frames are not supported; send JSON text",
                );
                self.conn
                    .send_text(Frame::err("invalid", error).to_text())
                    .await
            }
            Some(Ok(_)) => Ok(()), // ping/pong
            Some(Err(WsError::Io(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
                info!(
                    "peer unreachable: pings unacknowledged for two ticks; dropping the connection"
                );
                Err(Gone)
            }
            Some(Err(e)) => {
                // A peer that broke the protocol is told why (RFC 6455
                // 7.1.7); one that is gone is not.
                match read_error_close(&e) {
                    Some((code, reason)) => {
                        debug!(error = %e, "closing: {reason}");
                        let summary = &self.shared.log_summary;
                        summary.record(Kind::Protocol, reason.clone(), self.peer);
                        self.conn.close(code, &reason).await;
                        linger(&mut self.source).await;
                    }
                    None => debug!(error = %e, "read failed"),
                }
                Err(Gone)
            }
        }
    }
}

/// After our close frame: reads (and drops) what the peer still sends until
/// its close or the end of the stream, for at most [`CLOSE_LINGER`]. A
/// socket closed with unread data (a pong, a request in flight) is reset by
/// the kernel, and a reset can cost the peer the frames sent last — the
/// `shutdown` event, the close and its reason (RFC 6455 7.1.1: the server
/// closes TCP after the close handshake).
async fn linger(source: &mut Source) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = source.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
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
