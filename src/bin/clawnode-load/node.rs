//! One simulated node, one handshake, and the operator that calls
//! `system-presence`: the protocol side of the load generator.

use std::sync::Arc;
use std::time::Duration;

use clawnode::agent::session::{node_beacon, node_client, signed_node_connect, Credentials};
use clawnode::client::cli_operator_params;
use clawnode::client::handshake::{self, HandshakeError, Ws};
use clawnode::config::Secret;
use clawnode::host::HostFacts;
use clawnode::identity::DeviceIdentity;
use clawnode::protocol::{
    event, method, scope, ErrorShape, Frame, HostStats, NodeEventParams, Response,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::report::Stats;

/// TCP + WebSocket + challenge + hello-ok, as the agent allows.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every node of a run shares.
pub struct Shared {
    pub url: String,
    pub token: Option<Secret>,
    /// What the `system-presence` caller presents.
    pub operator_token: Option<Secret>,
    pub facts: HostFacts,
    pub stats: Stats,
    pub beacon_every: Option<Duration>,
    pub stats_every: Option<Duration>,
    /// The device tokens gateways issued (`hello-ok.auth.deviceToken`), by
    /// device id: presented on the next connect of that device, as the
    /// agent does, so a known device reconnecting costs what an agent's
    /// reconnect costs (the gateway issues a token only when none is
    /// presented).
    pub device_tokens: std::sync::Mutex<std::collections::HashMap<String, Secret>>,
}

impl Shared {
    fn device_token(&self, device_id: &str) -> Option<Secret> {
        let tokens = self.device_tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(device_id).cloned()
    }

    /// Keeps the device token a `hello-ok` payload carries, if any.
    fn keep_device_token(&self, device_id: &str, hello: Option<&serde_json::Value>) {
        let token = hello
            .and_then(|h| h.get("auth"))
            .and_then(|a| a.get("deviceToken"))
            .and_then(serde_json::Value::as_str);
        if let Some(token) = token {
            let mut tokens = self.device_tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens.insert(device_id.to_string(), Secret::new(token));
        }
    }
}

/// How a node of `hold`/`storm` runs.
pub struct NodeRun {
    pub shared: Arc<Shared>,
    /// Limits the handshakes in flight.
    pub gate: Arc<Semaphore>,
    pub stop: watch::Receiver<bool>,
    /// storm: reconnect after the connection is lost.
    pub reconnect: bool,
}

pub struct Node {
    identity: DeviceIdentity,
}

/// Why a connected session ended.
enum End {
    Stop,
    Lost,
}

impl Node {
    pub fn new(identity: DeviceIdentity) -> Node {
        Node { identity }
    }

    /// Connects (retrying failed handshakes with the agent's backoff), holds
    /// the session, and in storm mode reconnects after a loss, until stop.
    pub async fn run(self, mut run: NodeRun) {
        let mut backoff = clawnode::agent::backoff::Backoff::reconnect_default();
        let mut was_connected = false;
        loop {
            let attempt = async {
                let _permit = run.gate.acquire().await;
                connect(&run.shared, &self.identity).await
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = run.stop.changed() => return,
            };
            match result {
                Ok(ws) => {
                    backoff.reset();
                    run.shared.stats.connected(was_connected);
                    was_connected = true;
                    let end = session(ws, &run.shared, &self.identity, &mut run.stop).await;
                    run.shared.stats.disconnected();
                    match end {
                        End::Stop => return,
                        End::Lost if !run.reconnect => {
                            run.shared.stats.error("closed");
                            return;
                        }
                        End::Lost => run.shared.stats.lost(),
                    }
                }
                Err(kind) => run.shared.stats.error(&kind),
            }
            let wait = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = run.stop.changed() => return,
            }
        }
    }
}

/// One handshake, then a clean close (`handshakes` mode).
pub async fn handshake_once(shared: &Shared, identity: &DeviceIdentity) {
    match connect(shared, identity).await {
        Ok(mut ws) => {
            let _ = timeout(
                Duration::from_secs(2),
                ws.close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "load: done".into(),
                })),
            )
            .await;
        }
        Err(kind) => shared.stats.error(&kind),
    }
}

/// The error kind of a failed WebSocket connect.
fn ws_error_kind(e: &WsError) -> String {
    match e {
        WsError::Http(response) => format!("http_{}", response.status().as_u16()),
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "refused".into(),
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset => "reset".into(),
        WsError::Io(_) => "io".into(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(_) => "ws_protocol".into(),
        _ => "ws_other".into(),
    }
}

/// The error kind of a failed handshake.
fn handshake_error_kind(e: &HandshakeError) -> String {
    match e {
        HandshakeError::Open(e) | HandshakeError::Ws(e) => ws_error_kind(e),
        HandshakeError::Timeout => "timeout".into(),
        HandshakeError::Ended | HandshakeError::Closed(_) => "closed".into(),
        HandshakeError::InvalidFrame(_) => "bad_frame".into(),
        HandshakeError::InvalidChallenge(_) => "bad_challenge".into(),
        HandshakeError::Refused(e) => error_kind(e),
        HandshakeError::RefusedWithoutError => "refused_without_error".into(),
    }
}

/// The error kind of an error answer: its detail code, else its code.
fn error_kind(e: &ErrorShape) -> String {
    e.detail_code_str()
        .map(str::to_string)
        .unwrap_or_else(|| e.code.as_str().to_string())
}

/// The error kind of a refused response: its detail code, else its code.
fn refusal_kind(res: &Response) -> String {
    match &res.error {
        Some(e) => error_kind(e),
        None => "refused_without_error".into(),
    }
}

/// TCP, WebSocket, challenge, signed `connect`, hello-ok; records the
/// latency of a success.
async fn connect(shared: &Shared, identity: &DeviceIdentity) -> Result<Ws, String> {
    let started = Instant::now();
    let result = handshake::connect(
        &shared.url,
        None,
        "c",
        started + HANDSHAKE_TIMEOUT,
        |challenge| {
            let credentials = Credentials {
                shared: shared.token.clone(),
                device_token: shared.device_token(identity.device_id()),
            };
            let client = node_client(identity, identity.instance_id(), &shared.facts);
            signed_node_connect(identity, client, &credentials, challenge)
        },
    )
    .await;
    match result {
        Ok((ws, hello)) => {
            shared.stats.handshake(started.elapsed());
            shared.keep_device_token(identity.device_id(), hello.as_ref());
            Ok(ws)
        }
        Err(e) => Err(handshake_error_kind(&e)),
    }
}

/// A random point within `every`, so a run's nodes do not beat in step.
fn first_at(every: Option<Duration>) -> Option<Instant> {
    every.map(|d| Instant::now() + d.mul_f64(rand::random::<f64>()))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Holds a connected node: beacons and host stats at their intervals,
/// reading (and counting refused answers) until stop or loss.
async fn session(
    ws: Ws,
    shared: &Shared,
    identity: &DeviceIdentity,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let (mut sink, mut source) = ws.split();
    let mut next_beacon = first_at(shared.beacon_every);
    let mut next_stats = first_at(shared.stats_every);
    let mut seq: u64 = 0;
    let stats = HostStats {
        cpu_count: 2,
        load_average: Some([0.12, 0.2, 0.18]),
        memory_total_bytes: 8 << 30,
        memory_free_bytes: 5 << 30,
        disk_total_bytes: Some(100 << 30),
        disk_available_bytes: Some(60 << 30),
    };
    let stats_json = serde_json::to_string(&stats).unwrap_or_default();
    loop {
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(Frame::Res(res)) = Frame::parse(&text) {
                        if !res.ok {
                            let kind = refusal_kind(&res);
                            match res.id.as_bytes().first() {
                                Some(b'b') => shared.stats.beacon_failed(&kind),
                                Some(b's') => shared.stats.stats_failed(&kind),
                                _ => shared.stats.error(&kind),
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::Lost,
                Some(Ok(_)) => {}
            },
            _ = sleep_until(next_beacon.unwrap_or_else(far_future)), if next_beacon.is_some() => {
                seq += 1;
                let params = node_beacon(identity, identity.instance_id(), &shared.facts, Some(12));
                let text = Frame::request(format!("b{seq}"), method::SYSTEM_EVENT, &params).to_text();
                if sink.send(Message::text(text)).await.is_err() {
                    return End::Lost;
                }
                shared.stats.beacon_sent();
                next_beacon = shared.beacon_every.map(|d| Instant::now() + d);
            }
            _ = sleep_until(next_stats.unwrap_or_else(far_future)), if next_stats.is_some() => {
                seq += 1;
                let params = NodeEventParams {
                    event: event::NODE_HOST_STATS.to_string(),
                    payload_json: Some(stats_json.clone()),
                    payload: None,
                };
                let text = Frame::request(format!("s{seq}"), method::NODE_EVENT, &params).to_text();
                if sink.send(Message::text(text)).await.is_err() {
                    return End::Lost;
                }
                shared.stats.stats_sent();
                next_stats = shared.stats_every.map(|d| Instant::now() + d);
            }
            _ = stop.changed() => {
                let close = CloseFrame { code: CloseCode::Normal, reason: "load: done".into() };
                let _ = timeout(Duration::from_secs(2), sink.send(Message::Close(Some(close)))).await;
                return End::Stop;
            }
        }
    }
}

/// One operator connection calling `system-presence` `rate` times a second
/// until stop; records each round trip and the list's length.
pub async fn presence_caller(shared: Arc<Shared>, rate: f64, mut stop: watch::Receiver<bool>) {
    let connected = handshake::connect(
        &shared.url,
        None,
        "c",
        Instant::now() + HANDSHAKE_TIMEOUT,
        |_| cli_operator_params(&[scope::OPERATOR_READ], shared.operator_token.as_ref()),
    )
    .await;
    let mut ws = match connected {
        Ok((ws, _)) => ws,
        Err(e) => {
            let kind = handshake_error_kind(&e);
            return shared.stats.error(&format!("operator_{kind}"));
        }
    };
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        n += 1;
        let id = format!("p{n}");
        let started = Instant::now();
        let text =
            Frame::request(id.as_str(), method::SYSTEM_PRESENCE, serde_json::json!({})).to_text();
        if ws.send(Message::text(text)).await.is_err() {
            return shared.stats.error("operator_closed");
        }
        // Events (presence, tick) may come first; the answer is matched by
        // id. The round trip ends when the answer is read and its rows
        // counted, without building a JSON tree (as a JavaScript client's
        // JSON.parse would not cost much either).
        let answer = timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => match Skim::read(&text) {
                        Some(skim) if skim.id.as_deref() == Some(id.as_str()) => {
                            return Ok((skim, started.elapsed(), text))
                        }
                        Some(_) => continue,
                        None => return Err("bad_frame".to_string()),
                    },
                    Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(ws_error_kind(&e)),
                }
            }
        })
        .await;
        match answer {
            Ok(Ok((skim, took, _))) if skim.ok => shared.stats.presence_call(took, skim.rows),
            Ok(Ok((_, _, text))) => {
                let kind = match Frame::parse(&text) {
                    Ok(Frame::Res(res)) => refusal_kind(&res),
                    _ => "bad_frame".into(),
                };
                shared.stats.error(&format!("presence_{kind}"))
            }
            Ok(Err(kind)) => return shared.stats.error(&format!("operator_{kind}")),
            Err(_) => shared.stats.error("presence_timeout"),
        }
    }
    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// A frame read without building its payload: its id, whether it is a
/// successful response, and how many elements its payload array has.
struct Skim {
    id: Option<String>,
    ok: bool,
    rows: usize,
}

impl Skim {
    fn read(text: &str) -> Option<Skim> {
        use serde::de::IgnoredAny;
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            ok: bool,
            #[serde(default)]
            payload: Option<IgnoredAny>,
        }
        #[derive(serde::Deserialize)]
        struct Rows {
            payload: Vec<IgnoredAny>,
        }
        let head: Head = serde_json::from_str(text).ok()?;
        let rows = match (&head.payload, head.ok) {
            (Some(_), true) => serde_json::from_str::<Rows>(text).map_or(0, |r| r.payload.len()),
            _ => 0,
        };
        Some(Skim {
            id: head.id,
            ok: head.ok,
            rows,
        })
    }
}
