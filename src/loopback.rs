//! What counts as this host, defined once: the presence rule that ignores
//! loopback remote addresses (rule 8), the gateway URLs a local token may be
//! sent to, where a stored device token is trusted, and the loopback part of
//! the plaintext `ws://` policy.

use std::net::IpAddr;

/// 127.0.0.0/8, `::1`, and IPv4-mapped 127.0.0.0/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `localhost` (any case, a trailing dot allowed) or a loopback IP literal
/// (IPv6 in brackets or not). Names are taken as written, not resolved.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// Whether a gateway URL names this host.
pub fn is_loopback_url(url: &str) -> bool {
    url.parse::<tokio_tungstenite::tungstenite::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(is_loopback_host))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_hosts_and_urls() {
        for ip in ["127.0.0.1", "127.255.3.4", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.1", "128.0.0.1", "::2", "::ffff:10.0.0.1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["localhost.example", "gw", "10.0.0.1", "[::2]"] {
            assert!(!is_loopback_host(host), "{host}");
        }
        for url in [
            "ws://127.0.0.1:18789",
            "ws://127.3.4.5:1",
            "ws://localhost:1",
            "wss://LOCALHOST:1",
            "ws://[::1]:18789/x",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "ws://10.0.0.1:1",
            "wss://gw.example.com:1",
            "ws://[::2]:1",
            "garbage",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
}
