//! A WebSocket client written by hand on a `TcpStream`, for sending what a
//! well-behaved library will not: fragments in any order, reserved bits and
//! opcodes, unmasked or oversized frames, invalid UTF-8, data after a close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One frame as it goes on the wire (client to server).
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1..3 as the low three bits.
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
    /// The length announced in the header, when it is not the payload's
    /// (an oversized frame is announced and only its start is sent).
    pub declared_len: Option<u64>,
}

impl RawFrame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
            declared_len: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | ((self.rsv & 7) << 4) | (self.opcode & 15)];
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        let mask_bit = u8::from(self.masked) << 7;
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u64::from(u16::MAX) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if self.masked {
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code (if any) and reason.
    Close(Option<u16>, String),
    /// The TCP stream ended (or was reset) without a close frame.
    Eof,
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades (RFC 6455 opening handshake).
    pub async fn connect(addr: std::net::SocketAddr) -> RawWs {
        let stream = super::wait_within(
            &format!("TCP connection to {addr}"),
            super::RAW_WAIT,
            TcpStream::connect(addr),
        )
        .await
        .expect("tcp connect");
        Self::upgrade(stream, addr).await
    }

    /// [`RawWs::connect`] from `source` (a loopback address).
    pub async fn connect_from(source: &str, addr: std::net::SocketAddr) -> RawWs {
        let stream = super::wait_within(
            &format!("TCP connection to {addr} from {source}"),
            super::RAW_WAIT,
            super::flood::connect_from(source, addr),
        )
        .await
        .expect("tcp connect");
        Self::upgrade(stream, addr).await
    }

    async fn upgrade(mut stream: TcpStream, addr: std::net::SocketAddr) -> RawWs {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("upgrade");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = super::wait_within(
                "upgrade response",
                Duration::from_secs(5),
                stream.read(&mut chunk),
            )
            .await
            .expect("read upgrade response");
            assert!(n > 0, "closed during upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        // The server accepts our fixed key with the RFC's example answer.
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "bad accept: {head}"
        );
        buf.drain(..end);
        RawWs { stream, buf }
    }

    /// Writes bytes; `false` when the server has already gone. Panics when
    /// the server neither takes them nor goes within [`super::RAW_WAIT`].
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        let what = format!(
            "room to write {} bytes (the server neither read them nor closed)",
            bytes.len()
        );
        super::wait_within(&what, super::RAW_WAIT, self.stream.write_all(bytes))
            .await
            .is_ok()
    }

    pub async fn send(&mut self, frame: &RawFrame) -> bool {
        self.write(&frame.encode()).await
    }

    pub async fn send_text(&mut self, text: &str) -> bool {
        self.send(&RawFrame::new(1, text)).await
    }

    /// Reads one frame (server frames are unmasked and, from this gateway,
    /// never fragmented); `None` on timeout.
    pub async fn recv(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.recv_inner()).await.ok()
    }

    async fn recv_inner(&mut self) -> Received {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return frame;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Received::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// One complete server frame at the start of `buf`, and its length.
fn parse_server_frame(buf: &[u8]) -> Option<(Received, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 15;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    assert!(!masked, "the server masked a frame");
    let len = usize::try_from(len).expect("frame length");
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    let frame = match opcode {
        1 => Received::Text(String::from_utf8(payload).expect("server text is UTF-8")),
        2 => Received::Binary(payload),
        8 => {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
            Received::Close(code, reason)
        }
        9 => Received::Ping(payload),
        10 => Received::Pong(payload),
        other => panic!("server sent opcode {other}"),
    };
    Some((frame, at))
}
