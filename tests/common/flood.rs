//! Many sockets against one gateway: source addresses spread over
//! 127.0.x.y, the open-file limit, and the gateway's resident memory.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Resident set size of a process, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The highest RSS of `pid` sampled every 50 ms for `window`, in KiB.
pub async fn peak_rss_kib(pid: u32, window: Duration) -> u64 {
    let mut peak = rss_kib(pid);
    let until = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib(pid));
    }
    peak
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it): a thousand sockets here and as many in the gateway.
pub fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The source address of socket `i` when `per_source` sockets share one:
/// 127.0.`third`.1, 127.0.`third`.2, … (a /24 of loopback per test).
pub fn source_of(i: usize, per_source: usize, third: u8) -> String {
    format!("127.0.{third}.{}", 1 + i / per_source)
}

/// A TCP connection to `addr` from `source` (a loopback address).
pub async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("source address"))?;
    socket.connect(addr).await
}

/// The opening handshake of a WebSocket client on any stream (a TLS one,
/// say; [`super::raw_ws::RawWs`] does it on plain TCP): the request, then
/// the `101` head. `Err` says why not.
pub async fn upgrade<S>(stream: &mut S, host: SocketAddr) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("upgrade request not sent: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: what follows the head (the challenge) stays unread.
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => return Err("closed during the upgrade".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("upgrade answer not read: {e}")),
        }
    }
    if head.starts_with(b"HTTP/1.1 101") {
        Ok(())
    } else {
        Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        ))
    }
}

/// Bytes the kernel holds queued for sending on the sockets whose local
/// port is `port` (the gateway's side of its connections), from
/// /proc/net/tcp: data written and not yet taken by the peer.
pub fn queued_from_port(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local_address, queues) = (fields.get(1)?, fields.get(4)?);
            let tx = queues.split(':').next()?;
            local_address
                .ends_with(&local)
                .then(|| u64::from_str_radix(tx, 16).ok())
                .flatten()
        })
        .sum()
}
