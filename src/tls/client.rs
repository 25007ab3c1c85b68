//! The client side (the agent and `clawnode presence`): how a gateway URL
//! is reached, with the system roots or a pinned certificate.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::Connector;

use super::{provider, Fingerprint};

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
    if crate::loopback::is_loopback_host(&h) || h.ends_with(".local") || h.ends_with(".ts.net") {
        return true;
    }
    match h.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V4(ip)) => {
            let [a, b, ..] = ip.octets();
            ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        Ok(IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 || (first & 0xffc0) == 0xfec0
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
}
