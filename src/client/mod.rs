//! The operator client: connect as `mode: cli` (so it never becomes a
//! presence row), then make calls and read events ([`Session`]), or make one
//! call and close ([`call`]). Used by the CLI commands and by tests.
//!
//! [`handshake`] is the client side of the handshake that every client of
//! ours (this one, the agent, the load generator, the tests) goes through.

pub mod handshake;

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

use futures_util::stream::{SplitSink, SplitStream};

use crate::config::Secret;
use crate::protocol::{
    mode, scope, ClientInfo, ConnectParams, ErrorShape, EventFrame, Frame, CLI_CLIENT_ID,
};
use crate::tls::ClientTls;
use handshake::{HandshakeError, Ws};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url` (TLS as `tls` says), authenticates as a read-only CLI
/// operator and calls `method` with `params`; returns the response payload.
pub async fn call(
    url: &str,
    tls: &ClientTls,
    token: Option<&Secret>,
    method_name: &str,
    params: Value,
) -> Result<Value> {
    call_with_scopes(
        url,
        tls,
        token,
        &[scope::OPERATOR_READ],
        method_name,
        params,
    )
    .await
}

/// [`call`] with other operator scopes (`clawnode forget` needs admin).
pub async fn call_with_scopes(
    url: &str,
    tls: &ClientTls,
    token: Option<&Secret>,
    scopes: &[&str],
    method_name: &str,
    params: Value,
) -> Result<Value> {
    let connector = crate::tls::client_connector(url, tls)?;
    let deadline = Instant::now() + CALL_TIMEOUT;
    let (mut session, _) = Session::open(url, connector, token, scopes, deadline).await?;
    timeout_at(deadline, async {
        let answer = session.call(method_name, params).await;
        session.close().await;
        answer
    })
    .await
    .map_err(|_| no_answer(url))?
}

/// The error when the gateway does not answer within [`CALL_TIMEOUT`].
fn no_answer(url: &str) -> anyhow::Error {
    anyhow!(
        "no answer from gateway {url} within {}s",
        CALL_TIMEOUT.as_secs()
    )
}

/// The operator's `connect` parameters: `mode: cli`, these scopes, the
/// shared token if any.
pub fn cli_operator_params(scopes: &[&str], token: Option<&Secret>) -> ConnectParams {
    ConnectParams::operator(
        ClientInfo {
            id: CLI_CLIENT_ID.to_string(),
            display_name: None,
            version: crate::VERSION.to_string(),
            platform: std::env::consts::OS.to_string(),
            device_family: None,
            model_identifier: None,
            mode: mode::CLI.to_string(),
            instance_id: None,
        },
        scopes.iter().map(|s| s.to_string()).collect(),
        token.map(Secret::expose),
    )
}

/// Why a [`Session`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The gateway answered `connect` with an error (bad token, ...):
    /// retrying the same request will not help unless the error says so.
    #[error("gateway refused the connection: {0}")]
    Refused(ErrorShape),
    /// Anything else: unreachable, TLS, closed early, timed out.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// An open operator connection (`mode: cli`, so never a presence row):
/// calls and the events the gateway pushes.
pub struct Session {
    sink: SplitSink<Ws, Message>,
    source: SplitStream<Ws>,
    next_id: u64,
}

impl Session {
    /// Connects and authenticates within [`CALL_TIMEOUT`]; returns the
    /// session and the `hello-ok` payload.
    pub async fn connect(
        url: &str,
        tls: &ClientTls,
        token: Option<&Secret>,
        scopes: &[&str],
    ) -> Result<(Session, Value), ConnectError> {
        let connector = crate::tls::client_connector(url, tls)?;
        Session::open(url, connector, token, scopes, Instant::now() + CALL_TIMEOUT).await
    }

    async fn open(
        url: &str,
        connector: tokio_tungstenite::Connector,
        token: Option<&Secret>,
        scopes: &[&str],
        deadline: Instant,
    ) -> Result<(Session, Value), ConnectError> {
        let (ws, hello) = handshake::connect(url, Some(connector), "connect", deadline, |_| {
            cli_operator_params(scopes, token)
        })
        .await
        .map_err(|e| match e {
            HandshakeError::Refused(e) => ConnectError::Refused(e),
            e => ConnectError::Other(describe_handshake_error(url, e)),
        })?;
        let (sink, source) = ws.split();
        let session = Session {
            sink,
            source,
            next_id: 1,
        };
        Ok((session, hello.unwrap_or(Value::Null)))
    }

    /// Calls `method_name`; events that arrive meanwhile are dropped.
    pub async fn call(&mut self, method_name: &str, params: Value) -> Result<Value> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(Frame::request(&id, method_name, params).to_text())
            .await?;
        loop {
            if let Frame::Res(res) = self.next_frame().await? {
                if res.id == id {
                    if let Some(e) = res.error.filter(|_| !res.ok) {
                        bail!("{method_name} failed: {e}");
                    }
                    return Ok(res.payload.unwrap_or(Value::Null));
                }
            }
        }
    }

    /// The next event the gateway pushes (responses are skipped).
    pub async fn next_event(&mut self) -> Result<EventFrame> {
        loop {
            if let Frame::Event(ev) = self.next_frame().await? {
                return Ok(ev);
            }
        }
    }

    /// Says goodbye (best effort).
    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.sink
            .send(Message::text(text))
            .await
            .context("connection to gateway failed")
    }

    async fn next_frame(&mut self) -> Result<Frame> {
        handshake::next_frame(&mut self.source)
            .await
            .map_err(describe_read_error)
    }
}

/// "gateway closed the connection", with its close reason when it gave one.
fn closed_by_gateway(
    frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> anyhow::Error {
    anyhow!(
        "gateway closed the connection{}",
        frame
            .filter(|f| !f.reason.is_empty())
            .map(|f| format!(": {}", f.reason))
            .unwrap_or_default()
    )
}

/// A failed handshake in the operator's words.
fn describe_handshake_error(url: &str, e: HandshakeError) -> anyhow::Error {
    match e {
        HandshakeError::Open(e) => match crate::tls::describe_connect_error(&e) {
            Some(tls) => anyhow!("cannot connect to gateway {url}: {tls}"),
            // Keep an I/O error as the source, so callers can tell
            // "nothing listening" from other failures.
            None => match e {
                tokio_tungstenite::tungstenite::Error::Io(io) => {
                    anyhow::Error::new(io).context(format!("cannot connect to gateway {url}"))
                }
                tokio_tungstenite::tungstenite::Error::Http(response) => anyhow!(
                    "cannot connect to gateway {url}: {}",
                    handshake::describe_http_refusal(&response)
                ),
                e => anyhow!("cannot connect to gateway {url}: {e}"),
            },
        },
        HandshakeError::Timeout => no_answer(url),
        e => describe_read_error(e),
    }
}

/// A failed read from the gateway (during the handshake or after it) in
/// the operator's words.
fn describe_read_error(e: HandshakeError) -> anyhow::Error {
    match e {
        HandshakeError::Ended => anyhow!("gateway closed the connection"),
        HandshakeError::Closed(frame) => closed_by_gateway(frame),
        HandshakeError::Ws(e) => anyhow::Error::new(e).context("connection to gateway failed"),
        HandshakeError::InvalidFrame(e) => {
            anyhow::Error::new(e).context("gateway sent an invalid frame")
        }
        e => anyhow::Error::new(e),
    }
}
