//! Which `Host` and `Origin` the gateway answers to: its defence against
//! DNS rebinding and cross-site WebSocket hijacking. The config parses its
//! two settings (`public_names`, `allowed_origins`) with the types here;
//! the gateway's HTTP layer asks [`Site::admit`] about every request.
//!
//! Only a browser matters here, and a page cannot make it lie about two
//! things: `Host` is the name (or address) it dialled, and `Origin`, sent
//! with every WebSocket upgrade, is the page's own origin.
//!
//! - **`Host`** (every page request, and every upgrade that carries an
//!   `Origin`: a browser's; an upgrade without one is a program's, which
//!   no page can rebind, so agents may dial any alias): an IP literal is
//!   accepted, whatever it is: a rebinding needs a name whose address the
//!   attacker controls, and a browser that dialled an address reached the
//!   gateway directly (through a NAT or balancer address too). A name must
//!   be one of the gateway's: `localhost`, this host's name, or a public
//!   name from the config. A request without `Host` (HTTP/1.0; no browser
//!   sends one) is served. Else `421 Misdirected Request`.
//! - **`Origin`** (upgrades that carry one): accepted when it is listed in
//!   `allowed_origins`; or it is the same host and port as the `Host` the
//!   browser dialled (a page the gateway served, also through a proxy that
//!   keeps `Host`); or it is one of the gateway's own origins,
//!   `http(s)://NAME:PORT` with the listen port, NAME one of `127.0.0.1`,
//!   `localhost`, `[::1]` (listening on loopback or a wildcard), the listen
//!   address, this host's interface addresses (on a wildcard), this host's
//!   name or a public name. Else `403 Forbidden`, before any frame. A
//!   client without `Origin` (the agent, `clawnode presence`, OpenClaw's
//!   CLI) is not a browser and is not asked.
//!
//! OpenClaw's Control UI check (`gateway.controlUi.allowedOrigins`) also
//! accepts any loopback origin from a loopback client; this one does not:
//! another local web server's page (another port) is exactly the page the
//! check is for.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A host as in a URL: an IP address or a name (lowercase, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    Ip(IpAddr),
    Name(String),
}

impl HostName {
    /// `name`, `192.0.2.1` or `[2001:db8::1]`, as a browser writes a host
    /// (`Host` and `Origin`); `None` when it is none of these.
    pub fn parse(s: &str) -> Option<HostName> {
        if let Some(v6) = s.strip_prefix('[') {
            let ip = v6.strip_suffix(']')?.parse::<Ipv6Addr>().ok()?;
            return Some(HostName::Ip(IpAddr::V6(ip)));
        }
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Some(HostName::Ip(IpAddr::V4(ip)));
        }
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        (name.len() <= 253 && name.split('.').all(label_ok)).then_some(HostName::Name(name))
    }

    /// A configured host: as [`HostName::parse`], and IPv6 without brackets.
    pub fn parse_setting(s: &str) -> Option<HostName> {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => Some(HostName::Ip(ip)),
            Err(_) => HostName::parse(s.trim()),
        }
    }

    fn canonical(self) -> HostName {
        match self {
            HostName::Ip(ip) => HostName::Ip(ip.to_canonical()),
            name => name,
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
            HostName::Name(name) => f.write_str(name),
        }
    }
}

/// A web origin, `http(s)://host[:port]` (the port made explicit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: HostName,
    pub port: u16,
}

impl Origin {
    /// `http://host[:port]` or `https://…` (scheme and host in any case, one
    /// trailing `/` allowed); `None` for anything else (`null`, other
    /// schemes, paths, user info).
    pub fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.trim().split_once("://")?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_authority(authority)?;
        Some(Origin {
            https,
            host: host.canonical(),
            port: port.unwrap_or(if https { 443 } else { 80 }),
        })
    }

    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.host)?;
        if self.port != self.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// `host[:port]` as in `Host`: the host and the port, if written.
fn split_authority(s: &str) -> Option<(HostName, Option<u16>)> {
    let (host, port) = match s.rfind(':') {
        // A colon inside brackets belongs to an IPv6 address.
        Some(i) if !s[i..].contains(']') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None => None,
    };
    Some((HostName::parse(host)?.canonical(), port))
}

/// Why a request was refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
    /// `clawnode_connections_refused_total{reason}`, for a foreign `Host`
    /// or `Origin` (not for a malformed `Host`).
    pub label: Option<&'static str>,
}

/// A client's header value for a message: escaped, at most 200 characters.
fn quoted(value: &str) -> String {
    let short: String = value.chars().take(200).collect();
    format!("{short:?}")
}

/// The gateway's names and origins (see the module documentation).
#[derive(Debug, Clone)]
pub struct Site {
    /// The bound address (its port is the port of the own origins).
    pub listen: SocketAddr,
    tls: bool,
    /// This host's names (lowercase).
    host_names: Vec<String>,
    /// This host's addresses, for a wildcard listen address.
    interfaces: Vec<IpAddr>,
    public_names: Vec<HostName>,
    allowed_origins: Vec<Origin>,
}

impl Site {
    /// The site of a gateway on `listen`, with this host's name and (on a
    /// wildcard address) its interface addresses as they are now.
    pub fn for_this_host(
        listen: SocketAddr,
        tls: bool,
        public_names: &[HostName],
        allowed_origins: &[Origin],
    ) -> Site {
        let host_names = hostname::get()
            .ok()
            .and_then(|n| HostName::parse(n.to_str()?.trim()))
            .into_iter()
            .filter_map(|n| match n {
                HostName::Name(n) => Some(n),
                HostName::Ip(_) => None,
            })
            .collect();
        let interfaces = if listen.ip().is_unspecified() {
            if_addrs::get_if_addrs()
                .map(|ifs| ifs.iter().map(|i| i.ip().to_canonical()).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Site::new(
            listen,
            tls,
            host_names,
            interfaces,
            public_names,
            allowed_origins,
        )
    }

    pub fn new(
        listen: SocketAddr,
        tls: bool,
        host_names: Vec<String>,
        interfaces: Vec<IpAddr>,
        public_names: &[HostName],
        allowed_origins: &[Origin],
    ) -> Site {
        Site {
            listen,
            tls,
            host_names,
            interfaces,
            public_names: public_names
                .iter()
                .cloned()
                .map(HostName::canonical)
                .collect(),
            allowed_origins: allowed_origins.to_vec(),
        }
    }

    /// Decides one request from its `Host` and (for an upgrade) `Origin`.
    pub fn admit(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Refused> {
        let host = match host {
            None => None,
            Some(raw) => match split_authority(raw) {
                Some(authority) => Some((raw, authority)),
                None => {
                    return Err(Refused {
                        status: 400,
                        reason: format!("invalid Host header {}", quoted(raw)),
                        label: None,
                    })
                }
            },
        };
        if let Some((raw, (name, _))) = &host {
            if !self.answers_to(name) {
                return Err(Refused {
                    status: 421,
                    reason: format!(
                        "Host {} is not one of this gateway's names: if clients reach the \
                         gateway by this name, add it to [gateway] public_names (or --public-name)",
                        quoted(raw)
                    ),
                    label: Some("foreign_host"),
                });
            }
        }
        let Some(raw) = origin else { return Ok(()) };
        let allowed = Origin::parse(raw).is_some_and(|o| {
            let same_as_host = host.as_ref().is_some_and(|(_, (name, port))| {
                o.host == *name && o.port == port.unwrap_or(o.default_port())
            });
            same_as_host || self.allowed_origins.contains(&o) || self.is_own(&o)
        });
        if allowed {
            return Ok(());
        }
        Err(Refused {
            status: 403,
            reason: format!(
                "Origin {} is not allowed to open a WebSocket to this gateway: only pages of \
                 the gateway's own origins may (add others to [gateway] allowed_origins)",
                quoted(raw)
            ),
            label: Some("foreign_origin"),
        })
    }

    /// Whether `Host` may name this gateway.
    fn answers_to(&self, name: &HostName) -> bool {
        match name {
            HostName::Ip(_) => true,
            HostName::Name(n) => {
                n == "localhost" || self.host_names.contains(n) || self.public_names.contains(name)
            }
        }
    }

    /// One of the gateway's own origins: its scheme and listen port, and a
    /// name or address of its own.
    fn is_own(&self, o: &Origin) -> bool {
        if o.https != self.tls || o.port != self.listen.port() {
            return false;
        }
        let listen = self.listen.ip().to_canonical();
        let local = listen.is_loopback() || listen.is_unspecified();
        match &o.host {
            HostName::Ip(ip) => {
                *ip == listen
                    || (local && (*ip == Ipv4Addr::LOCALHOST || *ip == Ipv6Addr::LOCALHOST))
                    || (listen.is_unspecified() && self.interfaces.contains(ip))
                    || self.public_names.contains(&o.host)
            }
            HostName::Name(n) => {
                (local && n == "localhost")
                    || self.host_names.contains(n)
                    || self.public_names.contains(&o.host)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(listen: &str, public: &[&str], allowed: &[&str]) -> Site {
        Site::new(
            listen.parse().unwrap(),
            false,
            vec!["gw1".into()],
            vec!["127.0.0.1".parse().unwrap(), "10.0.0.5".parse().unwrap()],
            &public
                .iter()
                .map(|p| HostName::parse_setting(p).unwrap())
                .collect::<Vec<_>>(),
            &allowed
                .iter()
                .map(|o| Origin::parse(o).unwrap())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn hosts_and_origins_parse_as_a_browser_writes_them() {
        assert_eq!(
            HostName::parse("Gw1.Example.COM."),
            Some(HostName::Name("gw1.example.com".into()))
        );
        assert_eq!(
            HostName::parse("[::1]"),
            Some(HostName::Ip("::1".parse().unwrap()))
        );
        for bad in [
            "",
            "a b",
            "ex/ample",
            "[::1",
            "::1",
            "a..b",
            "é.example",
            "x@y",
        ] {
            assert_eq!(HostName::parse(bad), None, "{bad}");
        }
        assert_eq!(
            HostName::parse_setting("fd00::1"),
            Some(HostName::Ip("fd00::1".parse().unwrap()))
        );
        let o = Origin::parse("HTTPS://Presence.Example.com").unwrap();
        assert_eq!((o.https, o.port), (true, 443));
        assert_eq!(o.to_string(), "https://presence.example.com");
        assert_eq!(
            Origin::parse("http://[::1]:18789/").unwrap().to_string(),
            "http://[::1]:18789"
        );
        for bad in [
            "null",
            "*",
            "file://",
            "ws://127.0.0.1:1",
            "https://a.example/path",
            "https://u@a.example",
            "https://a.example:99999",
            "https://a.example:",
            "presence.example.com",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_host_is_one_of_the_gateways_names_or_any_address() {
        let s = site("0.0.0.0:18789", &["presence.example.com"], &[]);
        for ok in [
            None,
            Some("localhost"),
            Some("LOCALHOST.:18789"),
            Some("gw1"),
            Some("presence.example.com:443"),
            Some("127.0.0.1:18789"),
            Some("203.0.113.9"),
            Some("[::ffff:10.0.0.5]:1"),
        ] {
            assert_eq!(s.admit(ok, None), Ok(()), "{ok:?}");
        }
        for foreign in [
            "evil.example",
            "gw1.evil.example:18789",
            "localhost.evil.example",
        ] {
            let r = s.admit(Some(foreign), None).unwrap_err();
            assert_eq!(
                (r.status, r.label),
                (421, Some("foreign_host")),
                "{foreign}"
            );
            assert!(r.reason.contains("public_names"), "{}", r.reason);
        }
        let r = s.admit(Some("a b:1"), None).unwrap_err();
        assert_eq!(r.status, 400);
        let r = s.admit(Some("evil\u{1b}[31m"), None).unwrap_err();
        assert!(
            r.reason.contains("\\u{1b}") && !r.reason.contains('\u{1b}'),
            "{}",
            r.reason
        );
    }

    #[test]
    fn an_origin_is_allowed_same_as_host_or_own() {
        let s = site(
            "127.0.0.1:18789",
            &["presence.example.com"],
            &["https://dash.example.com"],
        );
        let host = Some("127.0.0.1:18789");
        for own in [
            "http://127.0.0.1:18789",
            "http://localhost:18789",
            "http://[::1]:18789",
            "http://gw1:18789",
            "http://presence.example.com:18789",
            "https://dash.example.com",
        ] {
            assert_eq!(s.admit(host, Some(own)), Ok(()), "{own}");
        }
        // Same host and port as the Host dialled, by the origin's default.
        for (host, origin) in [
            ("presence.example.com", "https://presence.example.com"),
            (
                "presence.example.com:8080",
                "http://presence.example.com:8080",
            ),
            ("localhost:9", "http://localhost:9"),
            ("203.0.113.9", "http://203.0.113.9"),
            // The scheme is the browser's: TLS may end at a proxy.
            ("127.0.0.1:18789", "https://127.0.0.1:18789"),
        ] {
            assert_eq!(s.admit(Some(host), Some(origin)), Ok(()), "{host} {origin}");
        }
        for foreign in [
            "http://127.0.0.1:18790",
            "http://127.0.0.2:18789",
            "http://localhost:3000",
            "http://10.0.0.5:18789",
            "https://evil.example",
            "https://presence.example.com",
            "http://dash.example.com",
            "null",
            "garbage",
        ] {
            let r = s.admit(host, Some(foreign)).unwrap_err();
            assert_eq!(
                (r.status, r.label),
                (403, Some("foreign_origin")),
                "{foreign}"
            );
            assert!(r.reason.contains(foreign), "{}", r.reason);
        }
        // Listening on one address: only that address is the gateway's.
        let s = site("10.0.0.5:18789", &[], &[]);
        assert!(s.admit(None, Some("http://10.0.0.5:18789")).is_ok());
        assert!(s.admit(None, Some("http://localhost:18789")).is_err());
        // On a wildcard: the interface addresses too.
        let s = site("[::]:18789", &[], &[]);
        assert!(s.admit(None, Some("http://10.0.0.5:18789")).is_ok());
        assert!(s.admit(None, Some("http://localhost:18789")).is_ok());
        assert!(s.admit(None, Some("http://10.0.0.6:18789")).is_err());
    }
}
