//! The client side of the gateway handshake, the one copy every client of
//! ours uses (the agent's session, the operator client, the load generator
//! and the test harness): open the WebSocket, read `connect.challenge`,
//! send the `connect` built for that challenge (signed or not), await its
//! response: the `hello-ok` payload, or a [`HandshakeError`] that says why
//! not. Callers map the error to their own words (a log line, an error
//! kind, an `anyhow` chain).
//!
//! Generic over the WebSocket stream, so a caller can keep a stream of its
//! own type; [`open`] opens the one every client of ours uses.

use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::protocol::{
    event, method, ConnectChallenge, ConnectParams, ErrorShape, Frame, FrameError,
};

/// The WebSocket a client of ours opens: plain or TLS over TCP.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a handshake did not end in `hello-ok`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The WebSocket could not be opened: TCP, TLS or the HTTP upgrade
    /// ([`crate::tls::describe_connect_error`] explains TLS failures).
    #[error("cannot connect: {0}")]
    Open(WsError),
    /// The deadline passed.
    #[error("handshake timed out")]
    Timeout,
    /// The connection ended without a close frame.
    #[error("connection closed during handshake")]
    Ended,
    /// The gateway closed the connection (with this close frame, if any).
    #[error("closed by gateway{}", .0.as_ref().filter(|f| !f.reason.is_empty()).map(|f| format!(": {}", f.reason)).unwrap_or_default())]
    Closed(Option<CloseFrame>),
    /// Reading or writing the open WebSocket failed.
    #[error(transparent)]
    Ws(WsError),
    /// A text message that is not a frame.
    #[error("invalid frame from gateway: {0}")]
    InvalidFrame(FrameError),
    /// A `connect.challenge` whose payload is not `{nonce, ts}`.
    #[error("invalid connect.challenge: {0}")]
    InvalidChallenge(serde_json::Error),
    /// The gateway answered `connect` with this error.
    #[error("gateway refused the connection: {0}")]
    Refused(ErrorShape),
    /// The gateway answered `connect` with `ok: false` and no error.
    #[error("gateway refused the connection without an error")]
    RefusedWithoutError,
}

/// Opens the WebSocket to `url` (TCP, TLS through `connector` or the
/// default one, upgrade) with the settings of every connection of ours.
pub async fn open(url: &str, connector: Option<Connector>) -> Result<Ws, WsError> {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        Some(crate::protocol::ws_config(None)),
        false,
        connector,
    )
    .await?;
    Ok(ws)
}

/// A gateway's answer other than `101` to the upgrade, in words: the status
/// and the first line of its body (why: "Host … is not one of this
/// gateway's names …"), control characters and bidi overrides dropped, at most 300
/// characters.
pub fn describe_http_refusal(
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> String {
    let status = response.status();
    let why: String = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .and_then(|body| body.lines().next().map(str::to_string))
        .unwrap_or_default()
        .chars()
        .filter(|&c| !crate::safe_text::is_unsafe(c))
        .take(300)
        .collect();
    let why = why.trim();
    if why.is_empty() {
        format!("HTTP {status} from gateway (not a WebSocket endpoint?)")
    } else {
        format!("HTTP {status} from gateway: {why}")
    }
}

/// [`open`], then [`handshake`], both by `deadline`: the open WebSocket
/// and the `hello-ok` payload.
pub async fn connect(
    url: &str,
    connector: Option<Connector>,
    request_id: &str,
    deadline: Instant,
    params: impl FnOnce(&ConnectChallenge) -> ConnectParams,
) -> Result<(Ws, Option<Value>), HandshakeError> {
    timeout_at(deadline, async {
        let mut ws = open(url, connector).await.map_err(HandshakeError::Open)?;
        let challenge = challenge(&mut ws).await?;
        let hello = request(&mut ws, request_id, &params(&challenge)).await?;
        Ok((ws, hello))
    })
    .await
    .unwrap_or(Err(HandshakeError::Timeout))
}

/// The handshake on an open WebSocket, by `deadline`: reads the challenge,
/// sends `connect` (id `request_id`) with the parameters `params` builds
/// for it, and returns the `hello-ok` payload.
pub async fn handshake<S>(
    ws: &mut S,
    request_id: &str,
    deadline: Instant,
    params: impl FnOnce(&ConnectChallenge) -> ConnectParams,
) -> Result<Option<Value>, HandshakeError>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    timeout_at(deadline, async {
        let challenge = challenge(ws).await?;
        request(ws, request_id, &params(&challenge)).await
    })
    .await
    .unwrap_or(Err(HandshakeError::Timeout))
}

/// The first step alone, by `deadline`: the challenge (other frames before
/// it are skipped).
pub async fn read_challenge<S>(
    ws: &mut S,
    deadline: Instant,
) -> Result<ConnectChallenge, HandshakeError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    timeout_at(deadline, challenge(ws))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// The second step alone, by `deadline`: sends `connect` with `params`
/// and returns the `hello-ok` payload.
pub async fn send_connect<S>(
    ws: &mut S,
    request_id: &str,
    params: &ConnectParams,
    deadline: Instant,
) -> Result<Option<Value>, HandshakeError>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    timeout_at(deadline, request(ws, request_id, params))
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

async fn challenge<S>(ws: &mut S) -> Result<ConnectChallenge, HandshakeError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        if let Frame::Event(ev) = next_frame(ws).await? {
            if ev.event == event::CONNECT_CHALLENGE {
                return serde_json::from_value(ev.payload)
                    .map_err(HandshakeError::InvalidChallenge);
            }
        }
    }
}

/// Sends `connect` and waits for its response; other frames (events, a
/// second challenge) are skipped.
async fn request<S>(
    ws: &mut S,
    request_id: &str,
    params: &ConnectParams,
) -> Result<Option<Value>, HandshakeError>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let text = Frame::request(request_id, method::CONNECT, params).to_text();
    ws.send(Message::text(text))
        .await
        .map_err(HandshakeError::Ws)?;
    loop {
        if let Frame::Res(res) = next_frame(ws).await? {
            if res.id == request_id {
                return match (res.ok, res.error) {
                    (true, _) => Ok(res.payload),
                    (false, Some(error)) => Err(HandshakeError::Refused(error)),
                    (false, None) => Err(HandshakeError::RefusedWithoutError),
                };
            }
        }
    }
}

/// The next text message, parsed (other messages are skipped).
pub(crate) async fn next_frame<S>(ws: &mut S) -> Result<Frame, HandshakeError>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return Frame::parse(&text).map_err(HandshakeError::InvalidFrame)
            }
            Some(Ok(Message::Close(frame))) => return Err(HandshakeError::Closed(frame)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(HandshakeError::Ws(e)),
            None => return Err(HandshakeError::Ended),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;
    use crate::protocol::{ClientInfo, ErrorCode, ErrorDetailCode};

    #[test]
    fn an_http_refusal_says_why_without_control_characters() {
        use tokio_tungstenite::tungstenite::http::Response;
        let refusal = |status: u16, body: Option<&str>| {
            let response = Response::builder()
                .status(status)
                .body(body.map(|b| b.as_bytes().to_vec()))
                .unwrap();
            describe_http_refusal(&response)
        };
        assert_eq!(
            refusal(421, Some("Host \"x\" is not one of this gateway's names\n")),
            "HTTP 421 Misdirected Request from gateway: Host \"x\" is not one of this gateway's names"
        );
        assert_eq!(
            refusal(403, Some("a\u{1b}]52;c;eA==\u{7}b\u{9b}2J\nsecond line")),
            "HTTP 403 Forbidden from gateway: a]52;c;eA==b2J"
        );
        assert_eq!(
            refusal(404, None),
            "HTTP 404 Not Found from gateway (not a WebSocket endpoint?)"
        );
    }

    /// A WebSocket stand-in: yields `incoming`, then ends (or, if `hang`,
    /// never answers again); keeps what is sent.
    #[derive(Default)]
    struct Fake {
        incoming: VecDeque<Message>,
        sent: Vec<Message>,
        hang: bool,
    }

    impl Fake {
        fn new(incoming: &[&str]) -> Fake {
            Fake {
                incoming: incoming.iter().map(|t| Message::text(*t)).collect(),
                ..Fake::default()
            }
        }
    }

    impl Stream for Fake {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.incoming.pop_front() {
                Some(m) => Poll::Ready(Some(Ok(m))),
                None if self.hang => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    impl Sink<Message> for Fake {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, m: Message) -> Result<(), WsError> {
            self.sent.push(m);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    const CHALLENGE: &str = r#"{"type":"event","event":"connect.challenge","payload":{"nonce":"n-1","ts":1700000000000}}"#;

    /// Operator parameters whose display name is the challenge's nonce, to
    /// see that they were built for it.
    fn params(challenge: &ConnectChallenge) -> ConnectParams {
        ConnectParams::operator(
            ClientInfo {
                id: "test".into(),
                display_name: Some(challenge.nonce.clone()),
                version: "1".into(),
                platform: "linux".into(),
                device_family: None,
                model_identifier: None,
                mode: "cli".into(),
                instance_id: None,
            },
            Vec::new(),
            Some("t"),
        )
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn challenge_connect_hello() {
        let mut ws = Fake::new(&[
            r#"{"type":"event","event":"tick","payload":{"ts":1}}"#,
            CHALLENGE,
            r#"{"type":"res","id":"other","ok":true,"payload":{}}"#,
            r#"{"type":"res","id":"c","ok":true,"payload":{"type":"hello-ok"}}"#,
        ]);
        let hello = handshake(&mut ws, "c", soon(), params).await.unwrap();
        assert_eq!(hello, Some(serde_json::json!({"type": "hello-ok"})));
        assert_eq!(ws.sent.len(), 1);
        let Message::Text(text) = &ws.sent[0] else {
            panic!("not text: {:?}", ws.sent[0])
        };
        let Ok(Frame::Req(req)) = Frame::parse(text) else {
            panic!("not a request: {text}")
        };
        assert_eq!((req.id.as_str(), req.method.as_str()), ("c", "connect"));
        assert_eq!(req.params["client"]["displayName"], "n-1");
    }

    #[tokio::test]
    async fn refusals_closes_and_garbage_are_typed() {
        let refused = r#"{"type":"res","id":"c","ok":false,"error":{"code":"INVALID_REQUEST","message":"unauthorized","details":{"code":"AUTH_TOKEN_MISMATCH"}}}"#;
        let mut ws = Fake::new(&[CHALLENGE, refused]);
        match handshake(&mut ws, "c", soon(), params).await {
            Err(HandshakeError::Refused(e)) => {
                assert_eq!(e.code, ErrorCode::InvalidRequest);
                assert_eq!(e.detail_code(), Some(ErrorDetailCode::AuthTokenMismatch));
            }
            other => panic!("{other:?}"),
        }
        let mut ws = Fake::new(&[CHALLENGE, r#"{"type":"res","id":"c","ok":false}"#]);
        assert!(matches!(
            handshake(&mut ws, "c", soon(), params).await,
            Err(HandshakeError::RefusedWithoutError)
        ));
        let mut ws = Fake::new(&[CHALLENGE]);
        assert!(matches!(
            handshake(&mut ws, "c", soon(), params).await,
            Err(HandshakeError::Ended)
        ));
        let mut ws = Fake::new(&[]);
        ws.incoming.push_back(Message::Close(None));
        assert!(matches!(
            handshake(&mut ws, "c", soon(), params).await,
            Err(HandshakeError::Closed(None))
        ));
        let mut ws = Fake::new(&["{not json"]);
        assert!(matches!(
            handshake(&mut ws, "c", soon(), params).await,
            Err(HandshakeError::InvalidFrame(_))
        ));
        let mut ws = Fake::new(&[r#"{"type":"event","event":"connect.challenge","payload":{}}"#]);
        assert!(matches!(
            handshake(&mut ws, "c", soon(), params).await,
            Err(HandshakeError::InvalidChallenge(_))
        ));
        assert!(ws.sent.is_empty());
    }

    #[tokio::test]
    async fn a_silent_gateway_times_out_at_the_deadline() {
        let mut ws = Fake::new(&[CHALLENGE]);
        ws.hang = true;
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            handshake(&mut ws, "c", deadline, params).await,
            Err(HandshakeError::Timeout)
        ));
        assert!(Instant::now() >= deadline);
        assert_eq!(ws.sent.len(), 1, "connect was sent before the wait");
    }
}
