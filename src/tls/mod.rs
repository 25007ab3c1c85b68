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
//!
//! `fingerprint.rs` has the certificate pins, `client.rs` the connector and
//! its URL rules, `server.rs` the gateway's certificate and acceptor.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

mod client;
mod fingerprint;
mod server;

pub use client::{
    check_url, client_connector, describe_connect_error, is_trusted_plaintext_host, ClientTls,
    PinMismatch,
};
pub use fingerprint::{Fingerprint, FINGERPRINT_FORMAT};
pub use server::{accept, ServerStream, ServerTls, ServerTlsFiles};

/// The *ring* crypto provider, given to every client and server config.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
