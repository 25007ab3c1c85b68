//! A minimal one-shot operator client: connect as `mode: cli` (so it never
//! becomes a presence row), make one call, close. Used by the CLI commands
//! and by tests.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Secret;
use crate::protocol::{
    event, method, mode, scope, ClientInfo, ConnectParams, Frame, CLI_CLIENT_ID,
};
use crate::tls::ClientTls;

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
    timeout(
        CALL_TIMEOUT,
        call_inner(url, connector, token, scopes, method_name, params),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "no answer from gateway {url} within {}s",
            CALL_TIMEOUT.as_secs()
        )
    })?
}

async fn call_inner(
    url: &str,
    connector: tokio_tungstenite::Connector,
    token: Option<&Secret>,
    scopes: &[&str],
    method_name: &str,
    params: Value,
) -> Result<Value> {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(crate::protocol::ws_config(None)),
        false,
        Some(connector),
    )
    .await
    .map_err(|e| match crate::tls::describe_connect_error(&e) {
        Some(tls) => anyhow!("cannot connect to gateway {url}: {tls}"),
        // Keep an I/O error as the source, so callers can tell
        // "nothing listening" from other failures.
        None => match e {
            tokio_tungstenite::tungstenite::Error::Io(io) => {
                anyhow::Error::new(io).context(format!("cannot connect to gateway {url}"))
            }
            e => anyhow!("cannot connect to gateway {url}: {e}"),
        },
    })?;
    let (mut sink, mut source) = ws.split();
    let connect = Frame::request(
        "1",
        method::CONNECT,
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
        ),
    );
    let mut connected = false;
    while let Some(msg) = source.next().await {
        let text = match msg.context("connection to gateway failed")? {
            Message::Text(t) => t,
            Message::Close(frame) => bail!(
                "gateway closed the connection{}",
                frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
            ),
            _ => continue,
        };
        match Frame::parse(&text)? {
            Frame::Event(ev) if ev.event == event::CONNECT_CHALLENGE => {
                sink.send(Message::text(connect.to_text())).await?;
            }
            Frame::Res(res) if res.id == "1" => {
                if let Some(e) = res.error.filter(|_| !res.ok) {
                    bail!("gateway refused the connection: {e}");
                }
                connected = true;
                let req = Frame::request("2", method_name, params.clone());
                sink.send(Message::text(req.to_text())).await?;
            }
            Frame::Res(res) if res.id == "2" && connected => {
                let _ = sink.send(Message::Close(None)).await;
                if let Some(e) = res.error.filter(|_| !res.ok) {
                    bail!("{method_name} failed: {e}");
                }
                return Ok(res.payload.unwrap_or(Value::Null));
            }
            _ => {}
        }
    }
    bail!("gateway closed the connection before answering")
}
