//! The server side (the gateway): its certificate and key, read once at
//! start-up, and the TLS handshake on an accepted socket.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{provider, Fingerprint};

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

pub(super) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
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

/// An accepted gateway connection, with or without TLS: plain TCP
/// (`Left`) or TLS (`Right`).
/// `Either` forwards reads and writes to whichever it holds.
pub type ServerStream = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// Runs the server side of the TLS handshake when `tls` is configured.
/// Unbounded in time: the caller applies the handshake deadline.
pub async fn accept(stream: TcpStream, tls: Option<&ServerTls>) -> io::Result<ServerStream> {
    match tls {
        None => Ok(Either::Left(stream)),
        Some(tls) => Ok(Either::Right(Box::new(tls.acceptor.accept(stream).await?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
