//! TLS for both roles, in one place.
//!
//! Client side (the agent and `clawnode presence`): [`client_connector`] is
//! the one function that decides how a gateway URL is reached. `wss://` is
//! verified either against the system roots (WebPKI: CA chain, host name,
//! validity) or, with a pinned certificate fingerprint, only by the SHA-256
//! of the server's certificate — as OpenClaw's `--tls-fingerprint` does
//! (it connects with `rejectUnauthorized: false` and compares the peer
//! certificate's `fingerprint256`). Plaintext `ws://` is refused to hosts
//! that are not loopback, private or link-local ([`check_url`]), like
//! OpenClaw's `isSecureWebSocketUrl`, unless explicitly allowed.
//!
//! Server side (the gateway): [`ServerTls::load`] reads the PEM pair once at
//! start-up; [`accept`] runs the TLS handshake on an accepted socket (the
//! caller bounds it by the connection's handshake deadline).
//!
//! The crypto provider is *ring*, passed explicitly to every config, so no
//! process-wide default provider is needed.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{anyhow, bail, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::Connector;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// Fingerprints
// ---------------------------------------------------------------------------

/// The SHA-256 of a certificate's DER encoding. Shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Parses a pin as OpenClaw's `normalizeTlsFingerprint` does: surrounding
    /// whitespace and an optional `sha256:` prefix (any case) are ignored;
    /// then either 64 hex digits or 32 colon-separated hex pairs, any case.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let t = text.trim();
        let t = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hex: String = if t.len() == 64 {
            t.to_string()
        } else if t.len() == 95 && t.split(':').all(|pair| pair.len() == 2) {
            t.split(':').collect()
        } else {
            return None;
        };
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2)?;
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Fingerprint(out))
    }

    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The fingerprint of the first (leaf) certificate in a PEM file.
    pub fn of_cert_file(path: &Path) -> Result<Fingerprint> {
        let certs = read_certs(path)?;
        Ok(Fingerprint::of_der(&certs[0]))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The hint shown with every invalid pin.
pub const FINGERPRINT_FORMAT: &str =
    "expected sha256:<64 hex digits> (colons between byte pairs and any case are accepted)";

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// How a client reaches the gateway: an optional certificate pin, and
/// whether plaintext `ws://` to a public host is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub fingerprint: Option<Fingerprint>,
    pub allow_insecure_ws: bool,
}

/// Whether plaintext `ws://` to `host` (as written in the URL) is acceptable
/// without an explicit override. OpenClaw's rule, on the literal host (no
/// DNS lookup, as OpenClaw: a name can resolve differently later): loopback
/// and `localhost`; IPv4 private (10/8, 172.16/12, 192.168/16), link-local
/// (169.254/16) and carrier-grade NAT (100.64/10); IPv6 unique-local
/// (fc00::/7), link-local (fe80::/10) and site-local (fec0::/10); IPv4-mapped
/// IPv6 as its IPv4; and names ending in `.local` (mDNS) or `.ts.net`
/// (Tailscale, encrypted by WireGuard).
pub fn is_trusted_plaintext_host(host: &str) -> bool {
    let h = host
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".local") || h.ends_with(".ts.net") {
        return true;
    }
    match h.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(ip)) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        Ok(IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
        }
        Err(_) => false,
    }
}

/// Checks a gateway URL against the TLS settings before any connection:
/// `ws://` or `wss://` with a host; a pin only with `wss://`; plaintext only
/// to a trusted host unless allowed. Returns whether the URL uses TLS.
pub fn check_url(url: &str, tls: &ClientTls) -> Result<bool> {
    let bad = || {
        anyhow!(
            "invalid gateway URL {url:?}: expected ws://HOST:PORT or wss://HOST:PORT{}",
            url_hint(url)
                .map(|h| format!(" (did you mean {h:?}?)"))
                .unwrap_or_default()
        )
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(bad()),
    };
    let host = match uri.host() {
        Some(h) if !h.is_empty() => h,
        _ => bail!("invalid gateway URL {url:?}: missing host"),
    };
    if secure {
        return Ok(true);
    }
    if tls.fingerprint.is_some() {
        bail!("a TLS fingerprint (--tls-fingerprint, tls_fingerprint) needs a wss:// gateway URL, not {url:?}");
    }
    if !tls.allow_insecure_ws && !is_trusted_plaintext_host(host) {
        bail!(
            "refusing plaintext ws:// to {host}: it is not a loopback or private address, so the token and presence data would cross the network unencrypted; use wss:// (the gateway serves TLS with [gateway] tls_cert/tls_key), or allow it with --allow-insecure-ws (CLAWNODE_ALLOW_INSECURE_WS=1, allow_insecure_ws = true)"
        );
    }
    Ok(false)
}

/// What a mistyped gateway URL probably meant: `ws//h:p`, `ws:/h:p`,
/// `http://h:p`, `https://h:p` or a bare `h:p`.
fn url_hint(url: &str) -> Option<String> {
    let url = url.trim();
    for (typed, scheme) in [
        ("https://", "wss"),
        ("http://", "ws"),
        ("wss//", "wss"),
        ("ws//", "ws"),
        ("wss:/", "wss"),
        ("ws:/", "ws"),
        ("wss:", "wss"),
        ("ws:", "ws"),
    ] {
        if let Some(rest) = url.strip_prefix(typed) {
            let rest = rest.trim_start_matches('/');
            let hint = format!("{scheme}://{rest}");
            return (!rest.is_empty() && hint != url).then_some(hint);
        }
    }
    let bare = !url.contains("://") && !url.contains(char::is_whitespace) && url.contains(':');
    bare.then(|| format!("ws://{url}"))
}

/// The one connector builder of the agent and the CLI client: plaintext for
/// `ws://` (after [`check_url`]); for `wss://` rustls with the pin verifier,
/// or with the system roots when nothing is pinned.
pub fn client_connector(url: &str, tls: &ClientTls) -> Result<Connector> {
    if !check_url(url, tls)? {
        return Ok(Connector::Plain);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS setup failed: {e}"))?;
    let config = match tls.fingerprint {
        Some(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                expected,
                provider: provider(),
            }))
            .with_no_client_auth(),
        None => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
    };
    Ok(Connector::Rustls(Arc::new(config)))
}

/// The system's trusted CAs (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the
/// distribution's bundle, e.g. /etc/ssl/certs on Debian).
fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        bail!("no system root certificates found{why}: install ca-certificates, or pin the gateway's certificate with --tls-fingerprint");
    }
    Ok(roots)
}

/// Accepts exactly the pinned certificate: no CA chain, host name or
/// validity period is checked (OpenClaw's pin semantics). Handshake
/// signatures are still verified, so the server must hold the key.
#[derive(Debug)]
struct PinVerifier {
    expected: Fingerprint,
    provider: Arc<CryptoProvider>,
}

/// The pinned and the presented fingerprint differ.
#[derive(Debug)]
pub struct PinMismatch {
    pub expected: Fingerprint,
    pub actual: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS fingerprint mismatch: expected {}, the gateway presented {}",
            self.expected, self.actual
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of_der(end_entity);
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    expected: self.expected,
                    actual,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A one-line description of a TLS failure while connecting, or `None`
/// when the error is not about TLS.
pub fn describe_connect_error(e: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    use tokio_tungstenite::tungstenite::error::{ProtocolError, TlsError};
    use tokio_tungstenite::tungstenite::Error as WsError;
    let rustls_error = match e {
        // A TLS server's alert is not an HTTP response.
        WsError::Protocol(ProtocolError::HttparseError(_)) => {
            return Some(format!(
                "the gateway did not answer with HTTP ({e}): if it serves TLS, use a wss:// URL"
            ))
        }
        WsError::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        WsError::Tls(TlsError::Rustls(e)) => e,
        WsError::Tls(other) => return Some(format!("TLS failed: {other}")),
        _ => return None,
    };
    Some(match rustls_error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(m) => format!("{m}; the certificate changed, or this is not the gateway: check --tls-fingerprint / tls_fingerprint"),
                None => format!("TLS certificate not trusted: {other}; pin it with --tls-fingerprint sha256:<hex> to skip CA and name checks"),
            }
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => "TLS certificate not trusted: it is not issued by a CA in the system roots (self-signed?); install its CA, or pin it with --tls-fingerprint sha256:<hex> (`clawnode check-config` on the gateway prints it)".to_string(),
        rustls::Error::InvalidCertificate(c) => format!(
            "TLS certificate not trusted: {}; pin it with --tls-fingerprint sha256:<hex> to skip CA and name checks",
            describe_certificate_error(c)
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "TLS handshake failed ({rustls_error}): is the gateway serving TLS? use ws:// for a plaintext gateway"
        ),
        other => format!("TLS handshake failed: {other}"),
    })
}

fn describe_certificate_error(e: &CertificateError) -> String {
    match e {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "it is not valid for this host name".to_string()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet".to_string()
        }
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Where the gateway's certificate chain and private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The gateway's loaded TLS identity: the acceptor and the fingerprint of
/// its certificate (what agents pin).
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow!("cannot read TLS {what} {}: {e}", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("invalid TLS certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "invalid TLS certificate {}: no PEM CERTIFICATE block",
            path.display()
        );
    }
    Ok(certs)
}

impl ServerTls {
    /// Reads and checks the PEM pair; every error is one line naming the
    /// file (unreadable, not PEM, no key, key not matching the certificate).
    pub fn load(files: &ServerTlsFiles) -> Result<ServerTls> {
        let certs = read_certs(&files.cert)?;
        let fingerprint = Fingerprint::of_der(&certs[0]);
        let key_pem = read_pem(&files.key, "key")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow!(
                "invalid TLS key {}: {}",
                files.key.display(),
                match e {
                    rustls_pki_types::pem::Error::NoItemsFound =>
                        "no PEM PRIVATE KEY block".to_string(),
                    other => other.to_string(),
                }
            )
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => anyhow!(
                    "TLS key {} does not match certificate {}",
                    files.key.display(),
                    files.cert.display()
                ),
                other => anyhow!(
                    "invalid TLS key {} or certificate {}: {other}",
                    files.key.display(),
                    files.cert.display()
                ),
            })?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        })
    }
}

/// An accepted gateway connection, with or without TLS.
pub enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Runs the server side of the TLS handshake when `tls` is configured.
/// Unbounded in time: the caller applies the handshake deadline.
pub async fn accept(stream: TcpStream, tls: Option<&ServerTls>) -> io::Result<ServerStream> {
    match tls {
        None => Ok(ServerStream::Plain(stream)),
        Some(tls) => Ok(ServerStream::Tls(Box::new(
            tls.acceptor.accept(stream).await?,
        ))),
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_url_gets_the_url_it_probably_meant() {
        let tls = ClientTls::default();
        for (typed, meant) in [
            ("ws//127.0.0.1:18789", "ws://127.0.0.1:18789"),
            ("wss//gw:443", "wss://gw:443"),
            ("ws:/gw:1", "ws://gw:1"),
            ("http://gw:18789", "ws://gw:18789"),
            ("https://gw:18789", "wss://gw:18789"),
            ("127.0.0.1:18789", "ws://127.0.0.1:18789"),
        ] {
            let e = check_url(typed, &tls).unwrap_err().to_string();
            assert!(
                e.contains("expected ws://HOST:PORT or wss://HOST:PORT")
                    && e.contains(&format!("did you mean {meant:?}")),
                "{typed}: {e}"
            );
        }
        let e = check_url("not a url", &tls).unwrap_err().to_string();
        assert!(
            e.contains("expected ws://HOST:PORT") && !e.contains("did you mean"),
            "{e}"
        );
    }

    const HEX: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";

    #[test]
    fn fingerprints_parse_like_openclaw() {
        let canonical = Fingerprint::parse(HEX).unwrap();
        assert_eq!(canonical.to_string(), format!("sha256:{HEX}"));
        let colons: String = HEX
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for text in [
            format!("sha256:{HEX}"),
            format!("SHA256:{}", HEX.to_uppercase()),
            format!("  {colons}\n"),
            format!("sha256:{}", colons.to_uppercase()),
        ] {
            assert_eq!(Fingerprint::parse(&text), Some(canonical), "{text}");
        }
        for bad in [
            "",
            "sha256:",
            &HEX[..62],
            &format!("{HEX}00"),
            &format!("sha1:{HEX}"),
            &HEX.replace('a', "g"),
            &format!("{}::", &colons[..92]),
            &format!("sha256: {HEX}"),
        ] {
            assert_eq!(Fingerprint::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn plaintext_hosts_follow_openclaws_rule() {
        for ok in [
            "127.0.0.1",
            "127.9.9.9",
            "localhost",
            "LOCALHOST.",
            "[::1]",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "[fd00::1]",
            "[fc00::1]",
            "[fe80::1]",
            "[fec0::1]",
            "[::ffff:10.0.0.1]",
            "printer.local",
            "gw.tail1234.ts.net",
        ] {
            assert!(is_trusted_plaintext_host(ok), "{ok}");
        }
        for refused in [
            "203.0.113.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "[2001:db8::1]",
            "[::ffff:203.0.113.1]",
            "gateway.example.com",
            "gw",
            "local",
        ] {
            assert!(!is_trusted_plaintext_host(refused), "{refused}");
        }
    }

    #[test]
    fn urls_are_checked_before_connecting() {
        let none = ClientTls::default();
        assert!(check_url("ws://127.0.0.1:1", &none).is_ok());
        assert!(check_url("wss://203.0.113.1:1", &none).is_ok());
        let e = check_url("ws://203.0.113.1:1", &none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refusing plaintext ws:// to 203.0.113.1")
                && e.contains("--allow-insecure-ws"),
            "{e}"
        );
        let allowed = ClientTls {
            allow_insecure_ws: true,
            ..ClientTls::default()
        };
        assert!(check_url("ws://203.0.113.1:1", &allowed).is_ok());
        let pinned = ClientTls {
            fingerprint: Fingerprint::parse(HEX),
            allow_insecure_ws: false,
        };
        let e = check_url("ws://127.0.0.1:1", &pinned)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a wss://"), "{e}");
        assert!(check_url("http://x", &none).is_err());
        assert!(check_url("wss://", &none).is_err());
        assert!(matches!(
            client_connector("ws://127.0.0.1:1", &none),
            Ok(Connector::Plain)
        ));
        assert!(matches!(
            client_connector("wss://127.0.0.1:1", &pinned),
            Ok(Connector::Rustls(_))
        ));
    }

    #[test]
    fn server_files_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let cert = tmp.path().join("cert.pem");
        let key = tmp.path().join("key.pem");
        let files = ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let err = |f: &ServerTlsFiles| format!("{:#}", ServerTls::load(f).unwrap_err());
        let e = err(&files);
        assert!(
            e.contains("cannot read TLS certificate") && e.contains("cert.pem"),
            "{e}"
        );
        std::fs::write(&cert, "not pem\n").unwrap();
        let e = err(&files);
        assert!(
            e.contains("invalid TLS certificate") && e.contains("cert.pem"),
            "{e}"
        );

        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&cert, a.cert.pem()).unwrap();
        let e = err(&files);
        assert!(
            e.contains("cannot read TLS key") && e.contains("key.pem"),
            "{e}"
        );
        std::fs::write(&key, a.cert.pem()).unwrap();
        let e = err(&files);
        assert!(
            e.contains("invalid TLS key") && e.contains("key.pem"),
            "{e}"
        );
        std::fs::write(&key, b.signing_key.serialize_pem()).unwrap();
        let e = err(&files);
        assert!(e.contains("does not match"), "{e}");
        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        let tls = ServerTls::load(&files).unwrap();
        assert_eq!(tls.fingerprint, Fingerprint::of_der(a.cert.der()));
        assert_eq!(Fingerprint::of_cert_file(&cert).unwrap(), tls.fingerprint);
    }
}
