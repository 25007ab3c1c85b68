//! The sending half of one client's WebSocket: responses, events and the
//! close, each under the write timeout, so a peer that stops reading costs
//! a bounded wait and then its connection.

use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::SinkExt as _;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use super::broadcast::{event_message, Outbound};
use super::outgoing::{Outgoing, FRAGMENT};
use crate::tls::ServerStream;

/// RFC 6455 limits a close reason to 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

/// The peer is gone, or stopped reading: the connection ends.
#[derive(Debug)]
pub struct Gone;

pub struct Connection {
    sink: SplitSink<WebSocketStream<ServerStream>, Message>,
    /// A write that takes longer than this means the peer stopped reading
    /// (`[gateway] write_timeout_secs`).
    write_timeout: Duration,
    /// This connection's event sequence number.
    seq: u64,
}

impl Connection {
    pub fn new(
        sink: SplitSink<WebSocketStream<ServerStream>, Message>,
        write_timeout: Duration,
    ) -> Connection {
        Connection {
            sink,
            write_timeout,
            seq: 0,
        }
    }

    /// A response (or any frame) as text.
    pub async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        self.send(Message::text(text)).await
    }

    /// A message in pieces ([`Outgoing`]): one frame when it is short, else
    /// fragments of [`FRAGMENT`] bytes, each copied only as it is written,
    /// all of them within one write timeout. tungstenite keeps one frame
    /// at a time, so a peer that stops reading holds one fragment here and
    /// the message's shared pieces, not a copy of the message.
    pub async fn send_message(&mut self, message: &Outgoing) -> Result<(), Gone> {
        if message.len() <= FRAGMENT {
            return self.send_text(message.to_text()).await;
        }
        let sink = &mut self.sink;
        let all = async {
            let mut fragments = message.fragments();
            let mut opcode = OpCode::Data(Data::Text);
            while let Some((chunk, last)) = fragments.next_chunk() {
                let frame = Frame::message(chunk, opcode, last);
                sink.send(Message::Frame(frame)).await?;
                opcode = OpCode::Data(Data::Continue);
            }
            Ok::<(), WsError>(())
        };
        written(timeout(self.write_timeout, all).await)
    }

    /// A server event, numbered with this connection's next `seq`.
    pub async fn send_event(&mut self, out: &Outbound) -> Result<(), Gone> {
        self.seq += 1;
        let message = event_message(out, self.seq);
        self.send_message(&message).await
    }

    /// A WebSocket ping (the dead-peer probe).
    pub async fn ping(&mut self) -> Result<(), Gone> {
        self.send(Message::Ping(Default::default())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        written(timeout(self.write_timeout, self.sink.send(message)).await)
    }

    /// Sends a close frame (its reason cut to 123 bytes on a character
    /// boundary) and flushes, each briefly bounded.
    pub async fn close(&mut self, code: CloseCode, reason: &str) {
        let mut end = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let frame = CloseFrame {
            code,
            reason: reason[..end].to_string().into(),
        };
        let _ = timeout(
            Duration::from_secs(2),
            self.sink.send(Message::Close(Some(frame))),
        )
        .await;
        self.finish().await;
    }

    /// Flushes what tungstenite queued (the reply to a peer's close), so
    /// the peer sees a completed close handshake rather than 1006.
    pub async fn finish(&mut self) {
        let _ = timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

/// A write's outcome: the peer is gone when it failed or timed out.
fn written(outcome: Result<Result<(), WsError>, tokio::time::error::Elapsed>) -> Result<(), Gone> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "write failed");
            Err(Gone)
        }
        Err(_) => {
            warn!("write timed out; dropping connection");
            Err(Gone)
        }
    }
}

/// The close frame for a read error the peer caused (an oversized frame,
/// invalid UTF-8, a protocol violation); `None` when the connection is gone.
pub fn read_error_close(e: &WsError) -> Option<(CloseCode, String)> {
    match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "frame too large".into())),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8 in a text frame".into())),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(p) => Some((CloseCode::Protocol, p.to_string())),
        _ => None,
    }
}
