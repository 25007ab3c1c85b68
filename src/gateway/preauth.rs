//! The WebSocket before authentication: the `connect.challenge` written and
//! the client's first message read here, under the pre-auth limit
//! (`max_preauth_payload`, 64 KiB), before tungstenite takes the socket
//! with the session's limit (`max_payload`).
//!
//! tungstenite reserves and buffers a whole frame up to its configured
//! maximum before anyone sees it, and a `WebSocketStream`'s limits cannot
//! be changed once it is built; so the gateway reads the first message
//! itself with tungstenite's public frame header parser. A frame (or a
//! fragmented message) that would exceed the limit is refused (1009) as
//! soon as its header says so, and so is a binary one (1008: it is never
//! the `connect`); otherwise exactly what the header announced is reserved,
//! and it is read in bounded steps. Frames must be masked; pings are
//! answered, pongs skipped, a close ends the handshake, and a text message
//! may come in fragments up to the limit. Protocol violations close with
//! the code and reason tungstenite gives them after `connect`. Whatever the
//! client sent after its first message is handed on, so nothing it
//! pipelined is lost.

use std::io::Cursor;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::auth::Rejection;
use super::connection::read_error_close;
use super::metrics::HandshakeResult;

/// The most read at once while no frame header is complete (a header is
/// at most 14 bytes; a little more saves reads of small frames).
const HEADER_READ: usize = 1024;
/// The most read at once into a frame's payload.
const PAYLOAD_READ: usize = 16 * 1024;
/// RFC 6455 5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The client's first text message, and the bytes it sent after it.
#[derive(Debug)]
pub struct FirstText {
    pub text: String,
    /// Read past the message's end: the start of what comes next, for
    /// tungstenite.
    pub leftover: Vec<u8>,
}

/// Writes `text` as one unmasked server text frame (the challenge).
pub async fn send_text<S: AsyncWrite + Unpin>(stream: &mut S, text: String) -> std::io::Result<()> {
    write_frame(stream, Frame::message(text, OpCode::Data(Data::Text), true)).await
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: Frame) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads the first text message (pings answered, pongs skipped), `buf`
/// being what was already read after the HTTP request head. Unbounded in
/// time: the caller applies the handshake deadline.
pub async fn read_first_text<S>(
    stream: &mut S,
    mut buf: Vec<u8>,
    limit: usize,
) -> Result<FirstText, Rejection>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A text message begun in fragments: what has come of it.
    let mut fragments: Option<Vec<u8>> = None;
    loop {
        let (header, len, header_len) = loop {
            let mut cursor = Cursor::new(&buf[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => break (header, len, cursor.position() as usize),
                Ok(None) => fill(stream, &mut buf, HEADER_READ).await?,
                Err(e) => return Err(violation(&e)),
            }
        };
        let so_far = fragments.as_ref().map_or(0, Vec::len);
        check(&header, len, so_far, fragments.is_some(), limit)?;
        // Checked against the limit above: fits in memory.
        let end = header_len + len as usize;
        buf.reserve_exact(end.saturating_sub(buf.len()));
        while buf.len() < end {
            let want = (end - buf.len()).min(PAYLOAD_READ);
            fill(stream, &mut buf, want).await?;
        }
        // `check` refused unmasked frames.
        let mask = header.mask.unwrap_or_default();
        let payload = &mut buf[header_len..end];
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        match header.opcode {
            OpCode::Control(Control::Ping) => {
                let pong = Frame::pong(buf[header_len..end].to_vec());
                buf.drain(..end);
                write_frame(stream, pong).await.map_err(io_error)?;
            }
            OpCode::Control(Control::Close) => {
                return Err(closed_by_peer(&buf[header_len..end]));
            }
            OpCode::Data(Data::Text) if header.is_final => {
                // The usual case, one frame: its payload is the message.
                let leftover = buf.split_off(end);
                buf.drain(..header_len);
                return text(buf, leftover);
            }
            OpCode::Data(_) => {
                let message = fragments.get_or_insert_with(Vec::new);
                message.reserve_exact(len as usize);
                message.extend_from_slice(&buf[header_len..end]);
                buf.drain(..end);
                // The fragment is in `message` now: its room is not kept.
                buf.shrink_to(HEADER_READ);
                if header.is_final {
                    return text(fragments.take().unwrap_or_default(), buf);
                }
            }
            // Pongs; reserved opcodes were refused by the parser.
            OpCode::Control(_) => {
                buf.drain(..end);
            }
        }
    }
}

/// Refuses a frame by its header, before any of its payload is read.
fn check(
    header: &FrameHeader,
    len: u64,
    so_far: usize,
    in_message: bool,
    limit: usize,
) -> Result<(), Rejection> {
    let protocol = |p: ProtocolError| Err(violation(&WsError::Protocol(p)));
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return protocol(ProtocolError::NonZeroReservedBits);
    }
    if header.mask.is_none() {
        return protocol(ProtocolError::UnmaskedFrameFromClient);
    }
    match header.opcode {
        OpCode::Control(_) if !header.is_final => protocol(ProtocolError::FragmentedControlFrame),
        OpCode::Control(_) if len > MAX_CONTROL_PAYLOAD => {
            protocol(ProtocolError::ControlFrameTooBig)
        }
        OpCode::Control(_) => Ok(()),
        OpCode::Data(Data::Continue) if !in_message => {
            protocol(ProtocolError::UnexpectedContinueFrame)
        }
        OpCode::Data(data @ (Data::Text | Data::Binary)) if in_message => {
            protocol(ProtocolError::ExpectedFragment(data))
        }
        // Refused by its header too: it is never read.
        OpCode::Data(Data::Binary) => Err(Rejection::close(
            CloseCode::Policy,
            "invalid request frame: binary frames are not supported",
            HandshakeResult::Rejected,
        )),
        OpCode::Data(_) => {
            let size = (so_far as u64).saturating_add(len);
            if size > limit as u64 {
                let what = if in_message { "message" } else { "frame" };
                return Err(Rejection::close(
                    CloseCode::Size,
                    format!(
                        "frame too large: a {what} of {size} bytes exceeds the {limit} byte limit before connect"
                    ),
                    HandshakeResult::Rejected,
                ));
            }
            Ok(())
        }
    }
}

/// The message as text, or 1007 when it is not UTF-8.
fn text(bytes: Vec<u8>, leftover: Vec<u8>) -> Result<FirstText, Rejection> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(FirstText { text, leftover }),
        Err(_) => Err(Rejection::close(
            CloseCode::Invalid,
            "invalid UTF-8 in a text frame",
            HandshakeResult::Rejected,
        )),
    }
}

/// The peer's close (its payload unmasked) before `connect`: answered with
/// its own code, as tungstenite answers a close, or with 1002 (1007) when
/// the frame is malformed (its reason not UTF-8).
fn closed_by_peer(payload: &[u8]) -> Rejection {
    let reason = "closed before connect";
    match payload {
        [] => Rejection::closed(CloseCode::Normal, reason),
        [_] => violation(&WsError::Protocol(ProtocolError::InvalidCloseSequence)),
        [hi, lo, rest @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
            if std::str::from_utf8(rest).is_err() {
                Rejection::close(
                    CloseCode::Invalid,
                    "invalid UTF-8 in a close frame",
                    HandshakeResult::Rejected,
                )
            } else if !code.is_allowed() {
                Rejection::close(
                    CloseCode::Protocol,
                    "Protocol violation",
                    HandshakeResult::Rejected,
                )
            } else {
                Rejection::closed(code, reason)
            }
        }
    }
}

/// The close for a protocol violation, as after `connect`.
fn violation(e: &WsError) -> Rejection {
    let (code, reason) =
        read_error_close(e).unwrap_or_else(|| (CloseCode::Protocol, e.to_string()));
    Rejection::close(code, reason, HandshakeResult::Rejected)
}

fn io_error(e: std::io::Error) -> Rejection {
    violation(&WsError::Io(e))
}

/// Reads at most `want` more bytes onto `buf`; the end of the stream
/// before the first message is the peer leaving.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<(), Rejection> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let read = stream.read(&mut buf[start..]).await;
    let n = *read.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    match read {
        Ok(0) => Err(Rejection::closed(
            CloseCode::Normal,
            "closed before connect",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(io_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 * 1024;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = FrameHeader {
            is_final: fin,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode: OpCode::from(opcode),
            mask: Some([1, 2, 3, 4]),
        };
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        out
    }

    /// Runs the reader over `input` (split at `split` between the HTTP
    /// rest and the socket), returning its result and what it wrote.
    async fn run(input: Vec<u8>, split: usize) -> (Result<FirstText, Rejection>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(256 * 1024);
        let (rest, later) = input.split_at(split.min(input.len()));
        theirs.write_all(later).await.unwrap();
        drop(theirs.shutdown().await);
        let result = read_first_text(&mut ours, rest.to_vec(), LIMIT).await;
        drop(ours);
        let mut written = Vec::new();
        theirs.read_to_end(&mut written).await.unwrap();
        (result, written)
    }

    #[tokio::test]
    async fn one_frame_and_what_follows_it() {
        let mut input = frame(true, 1, br#"{"type":"req"}"#);
        input.extend(frame(true, 1, b"next"));
        for split in [0, 3, input.len()] {
            let (first, _) = run(input.clone(), split).await;
            let first = first.unwrap();
            assert_eq!(first.text, r#"{"type":"req"}"#);
            assert_eq!(first.leftover, frame(true, 1, b"next"));
        }
    }

    #[tokio::test]
    async fn fragments_with_a_ping_between_and_the_pong() {
        let mut input = frame(false, 1, b"con");
        input.extend(frame(true, 9, b"hi"));
        input.extend(frame(false, 0, b"ne"));
        input.extend(frame(true, 0, b"ct"));
        let (first, written) = run(input, 0).await;
        assert_eq!(first.unwrap().text, "connect");
        // The pong: unmasked, the ping's payload.
        assert_eq!(written, [0x8a, 2, b'h', b'i']);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_by_its_header() {
        // Only the header is sent: the refusal cannot have waited for more.
        let mut header = frame(true, 1, &[]);
        header.truncate(2);
        header[1] = 0x80 | 127;
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let (first, _) = run(header, 0).await;
        let rejection = first.unwrap_err();
        assert_eq!(rejection.close, CloseCode::Size);
        assert!(
            rejection.reason.contains("frame too large"),
            "{}",
            rejection.reason
        );
        assert!(rejection
            .reason
            .contains("1048576 bytes exceeds the 65536 byte limit"));
    }

    #[tokio::test]
    async fn the_limit_holds_across_fragments_and_admits_exactly_it() {
        let half = vec![b' '; LIMIT / 2];
        let mut input = frame(false, 1, &half);
        input.extend(frame(true, 0, &half));
        assert_eq!(run(input.clone(), 0).await.0.unwrap().text.len(), LIMIT);
        let mut over = frame(false, 1, &half);
        over.extend(frame(true, 0, &[b' '; LIMIT / 2 + 1]));
        let rejection = run(over, 0).await.0.unwrap_err();
        assert_eq!(rejection.close, CloseCode::Size);
        assert!(rejection.reason.contains("a message of 65537 bytes"));
    }

    #[tokio::test]
    async fn violations_close_as_after_connect() {
        let mut unmasked = frame(true, 1, b"x");
        unmasked[1] &= 0x7f;
        let mut rsv = frame(true, 1, b"x");
        rsv[0] |= 0x40;
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (unmasked, CloseCode::Protocol),
            (rsv, CloseCode::Protocol),
            (frame(true, 0, b"x"), CloseCode::Protocol),
            (frame(true, 3, b"x"), CloseCode::Protocol),
            (frame(true, 11, b""), CloseCode::Protocol),
            (frame(false, 9, b""), CloseCode::Protocol),
            (frame(true, 9, &[0; 126]), CloseCode::Protocol),
            (
                [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(),
                CloseCode::Protocol,
            ),
            (frame(true, 1, &[0xff, 0xfe]), CloseCode::Invalid),
            (frame(true, 2, b"{}"), CloseCode::Policy),
            (frame(true, 8, &1000u16.to_be_bytes()), CloseCode::Normal),
            (frame(true, 8, &1005u16.to_be_bytes()), CloseCode::Protocol),
            (frame(true, 8, &[3]), CloseCode::Protocol),
            (Vec::new(), CloseCode::Normal),
        ];
        for (input, code) in cases {
            let rejection = run(input.clone(), 0).await.0.unwrap_err();
            assert_eq!(rejection.close, code, "{input:?}: {}", rejection.reason);
        }
    }
}
