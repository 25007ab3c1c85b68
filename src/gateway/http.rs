//! HTTP on the WebSocket port, as OpenClaw serves its Control UI there.
//!
//! The request head is read once ([`read_request`], parsed by `httparse`).
//! Its `Host` (and an upgrade's `Origin`) must be the gateway's own
//! ([`crate::origin`]: DNS rebinding, cross-site WebSocket hijacking), else
//! 421 or 403. A WebSocket upgrade is checked as tungstenite checks it and
//! answered `101` here; the handler then hands the socket, with any bytes
//! already read, to tungstenite. Anything else is a plain request for one
//! of the pages below, answered with `Connection: close`:
//!
//! - `GET /`: the Instances page (`web/instances.html`, embedded);
//! - `GET /healthz`: 200 while the gateway serves;
//! - `GET /readyz`: 200 while it accepts new clients, else 503 and why;
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text), behind the
//!   token when `metrics_require_token` is set.

use std::sync::OnceLock;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::state::Shared;
use crate::origin::Site;

/// The largest request head we read.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// What the peer asked for.
#[derive(Debug, PartialEq)]
pub enum Request {
    /// A valid WebSocket upgrade; `rest` is what followed the head.
    Upgrade {
        accept_key: String,
        rest: Vec<u8>,
        host: Option<String>,
        /// Sent by browsers (only) with every upgrade.
        origin: Option<String>,
    },
    /// Anything else.
    Plain(PlainRequest),
}

#[derive(Debug, PartialEq)]
pub struct PlainRequest {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// The `Authorization` header's bearer token, if any.
    pub bearer: Option<String>,
    pub host: Option<String>,
}

/// Why no request could be read; `status` is what to answer, if anything.
#[derive(Debug, PartialEq)]
pub struct BadRequest {
    pub status: Option<u16>,
    pub reason: String,
    /// A request refused for its `Host` or `Origin`: the
    /// `clawnode_connections_refused_total` reason.
    pub refused: Option<&'static str>,
}

impl BadRequest {
    fn answer(status: u16, reason: impl Into<String>) -> Self {
        BadRequest {
            status: Some(status),
            reason: reason.into(),
            refused: None,
        }
    }
}

/// Reads and classifies one request head, and refuses it unless `site`
/// admits its `Host` (and an upgrade's `Origin`).
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    site: &Site,
) -> Result<Request, BadRequest> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| BadRequest {
            status: None,
            reason: format!("read failed: {e}"),
            refused: None,
        })?;
        if n == 0 {
            return Err(BadRequest {
                status: None,
                reason: "closed before a request".into(),
                refused: None,
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = parse(&buf)? {
            let (host, origin) = match &request {
                // An upgrade without Origin is not a browser's (every
                // browser sends one with a WebSocket): no page can have
                // rebound the name it dialled, so an agent that reaches
                // the gateway through a DNS alias keeps working.
                Request::Upgrade { origin: None, .. } => (None, None),
                Request::Upgrade { host, origin, .. } => (host.as_deref(), origin.as_deref()),
                Request::Plain(p) => (p.host.as_deref(), None),
            };
            site.admit(host, origin).map_err(|refused| BadRequest {
                status: Some(refused.status),
                reason: refused.reason,
                refused: refused.label,
            })?;
            return Ok(request);
        }
        if buf.len() >= MAX_HEAD {
            return Err(BadRequest::answer(
                431,
                format!("request head larger than {MAX_HEAD} bytes"),
            ));
        }
    }
}

/// Parses a complete head out of `buf` (`None`: not complete yet).
pub fn parse(buf: &[u8]) -> Result<Option<Request>, BadRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(BadRequest::answer(
                431,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => {
            return Err(BadRequest::answer(
                400,
                format!("invalid HTTP request: {e}"),
            ))
        }
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    // `Host` and `Origin` decide whether the request is served at all: one
    // of each at most, in UTF-8.
    let mut host = None;
    let mut origin = None;
    for (name, slot) in [("Host", &mut host), ("Origin", &mut origin)] {
        let mut values = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name));
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(BadRequest::answer(
                    400,
                    format!("more than one {name} header"),
                ));
            }
            let Ok(value) = std::str::from_utf8(value.value) else {
                return Err(BadRequest::answer(
                    400,
                    format!("the {name} header is not UTF-8"),
                ));
            };
            *slot = Some(value.trim().to_string());
        }
    }
    let method = req.method.unwrap_or_default();
    let path = req.path.unwrap_or_default();
    let upgrade = header("upgrade");
    let connection_upgrade = header("connection").is_some_and(|c| {
        c.split([' ', ','])
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
    });
    // A WebSocket attempt names websocket or carries a key; any other
    // `Upgrade` (h2c, say) may be ignored (RFC 9110 7.8): a plain request.
    let websocket = upgrade.is_some_and(|u| {
        u.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    }) || header("sec-websocket-key").is_some();
    if !websocket {
        let bearer = header("authorization")
            .and_then(|a| a.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_string());
        return Ok(Some(Request::Plain(PlainRequest {
            method: method.to_string(),
            path: path.split('?').next().unwrap_or_default().to_string(),
            bearer,
            host,
        })));
    }
    // The checks tungstenite's server handshake makes (RFC 6455 4.2.1).
    let bad = |why: &str| Err(BadRequest::answer(400, format!("WebSocket upgrade: {why}")));
    if method != "GET" {
        return bad("the method must be GET");
    }
    if req.version != Some(1) {
        return bad("HTTP/1.1 is required");
    }
    if !connection_upgrade {
        return bad("the Connection header must contain Upgrade");
    }
    if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        return bad("the Upgrade header must be websocket");
    }
    if header("sec-websocket-version") != Some("13") {
        return bad("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = header("sec-websocket-key") else {
        return bad("Sec-WebSocket-Key is missing");
    };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if key.len() != 24 || decoded.map_or(true, |k| k.len() != 16) {
        return bad("Sec-WebSocket-Key is not 16 bytes in base64");
    }
    Ok(Some(Request::Upgrade {
        accept_key: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        rest: buf[len..].to_vec(),
        host,
        origin,
    }))
}

/// The `101 Switching Protocols` answer to an upgrade.
pub fn switching_protocols(accept_key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
    )
}

/// A complete response with `Connection: close`.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body: String = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// The response's bytes; without the body for `HEAD`.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The Instances page's policy: its own inline script and style (allowed by
/// the SHA-256 of their text as served), WebSocket back to this origin,
/// nothing else.
fn page_csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            inline_hashes(page(), "script"),
            inline_hashes(page(), "style"),
        )
    })
}

/// The CSP hash sources (`'sha256-<base64>'`, space-separated) of the text
/// of every `<tag>…</tag>` element (written without attributes) in `html`.
fn inline_hashes(html: &str, tag: &str) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut sources = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = Sha256::digest(&body.as_bytes()[..end]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        sources.push(format!("'sha256-{b64}'"));
        rest = &body[end + close.len()..];
    }
    sources.join(" ")
}

/// The Instances page with this build's version and status thresholds.
fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("web/instances.html")
            .replace("{{VERSION}}", crate::VERSION)
            .replace(
                "{{PROTOCOL}}",
                &crate::protocol::PROTOCOL_VERSION.to_string(),
            )
            .replace(
                "{{ACTIVE_MS}}",
                &crate::presence::ACTIVE_MAX_AGE_MS.to_string(),
            )
            .replace("{{IDLE_MS}}", &crate::presence::IDLE_MAX_AGE_MS.to_string())
    })
}

/// Answers a plain request.
pub fn respond(req: &PlainRequest, shared: &Shared, ready: Result<(), String>) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = Response::text(405, "only GET and HEAD are served here");
        r.headers.push(("Allow", "GET, HEAD".into()));
        return r;
    }
    match req.path.as_str() {
        "/" | "/index.html" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            headers: vec![
                ("Content-Security-Policy", page_csp().into()),
                ("Referrer-Policy", "no-referrer".into()),
                ("X-Frame-Options", "DENY".into()),
            ],
            body: page().as_bytes().to_vec(),
        },
        "/healthz" => Response::text(200, "ok"),
        "/readyz" => match ready {
            Ok(()) => Response::text(200, "ready"),
            Err(why) => Response::text(503, format!("not ready: {why}")),
        },
        "/metrics" => {
            if shared.config.settings.tuning.metrics_require_token {
                if let Some(expected) = &shared.config.token {
                    let given = req.bearer.as_deref().unwrap_or_default();
                    // The join token is enough (a scraper is no operator);
                    // the operator token, which may do anything, too.
                    let operator = shared
                        .config
                        .operator_token
                        .as_ref()
                        .is_some_and(|t| super::auth::tokens_match(given, t.expose()));
                    if !operator && !super::auth::tokens_match(given, expected.expose()) {
                        let mut r = Response::text(
                            401,
                            "metrics need the gateway token: Authorization: Bearer <token>",
                        );
                        r.headers
                            .push(("WWW-Authenticate", "Bearer realm=\"clawnode\"".into()));
                        return r;
                    }
                }
            }
            Response {
                status: 200,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                headers: Vec::new(),
                body: shared.render_metrics().into_bytes(),
            }
        }
        _ => Response::text(404, format!("no page at {}", req.path)),
    }
}

/// Answers a plain request and closes.
pub async fn serve<S: AsyncWrite + Unpin>(
    stream: &mut S,
    req: &PlainRequest,
    shared: &Shared,
    stopping: bool,
) {
    let ready = if stopping {
        Err("the gateway is stopping".to_string())
    } else {
        shared.readiness()
    };
    let response = respond(req, shared, ready);
    tracing::debug!(method = %req.method, path = %req.path, status = response.status, "HTTP request");
    send(
        stream,
        &response,
        req.method == "HEAD",
        shared.config.settings.tuning.write_timeout,
    )
    .await;
}

/// Answers a request that could not be read or is refused, when it
/// deserves an answer.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, bad: BadRequest, shared: &Shared) {
    if let Some(label) = bad.refused {
        shared.metrics.refused(label);
    }
    if let Some(status) = bad.status {
        let response = Response::text(status, bad.reason);
        send(
            stream,
            &response,
            false,
            shared.config.settings.tuning.write_timeout,
        )
        .await;
    }
}

/// Writes `response` and closes the write side (best effort, bounded by
/// the write timeout).
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    head_only: bool,
    write_timeout: std::time::Duration,
) {
    let bytes = response.to_bytes(head_only);
    let _ = tokio::time::timeout(write_timeout, async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn an_upgrade_gets_the_rfc_accept_key_and_keeps_what_followed() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x00");
        match parse(&bytes) {
            Ok(Some(Request::Upgrade {
                accept_key,
                rest,
                host,
                origin,
            })) => {
                assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(rest, b"\x81\x00");
                assert_eq!((host.as_deref(), origin), (Some("x"), None));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert_eq!(parse(&UPGRADE.as_bytes()[..40]), Ok(None));
    }

    #[test]
    fn a_broken_upgrade_says_what_is_wrong() {
        for (from, to, why) in [
            (
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 8",
                "Version must be 13",
            ),
            ("Upgrade: websocket", "Upgrade: h2c", "must be websocket"),
            ("Upgrade: websocket\r\n", "", "must be websocket"),
            ("GET / HTTP/1.1", "POST / HTTP/1.1", "must be GET"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "short", "not 16 bytes"),
            (
                "Connection: keep-alive, Upgrade",
                "Connection: close",
                "must contain Upgrade",
            ),
        ] {
            let req = UPGRADE.replace(from, to);
            let err = parse(req.as_bytes()).unwrap_err();
            assert_eq!(err.status, Some(400), "{req}");
            assert!(err.reason.contains(why), "{}: {why}", err.reason);
        }
    }

    #[test]
    fn a_plain_request_keeps_its_path_and_bearer_token() {
        let req = "GET /metrics?x=1 HTTP/1.1\r\nAuthorization: Bearer  abc \r\n\r\n";
        assert_eq!(
            parse(req.as_bytes()),
            Ok(Some(Request::Plain(PlainRequest {
                method: "GET".into(),
                path: "/metrics".into(),
                bearer: Some("abc".into()),
                host: None,
            })))
        );
    }

    #[test]
    fn another_upgrade_is_ignored() {
        let req =
            "GET /healthz HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
        assert!(
            matches!(parse(req.as_bytes()), Ok(Some(Request::Plain(p))) if p.path == "/healthz")
        );
    }

    #[test]
    fn garbage_is_a_400_and_too_many_headers_a_431() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\r\n\r\n").unwrap_err().status,
            Some(400)
        );
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..40 {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(many.as_bytes()).unwrap_err().status, Some(431));
    }

    #[test]
    fn inline_elements_are_allowed_by_their_hash() {
        // The example of the CSP specification.
        assert_eq!(
            inline_hashes("<p><script>alert('Hello, world.');</script>", "script"),
            "'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"
        );
        assert_eq!(
            inline_hashes("<style>a</style><style>b</style>", "style")
                .matches("'sha256-")
                .count(),
            2
        );
        assert_eq!(inline_hashes("<p>no script</p>", "script"), "");
    }

    #[test]
    fn the_page_policy_names_its_one_script_and_one_style() {
        let csp = page_csp();
        // No keyword that lifts the policy: only 'none', 'self' and hashes.
        for source in csp.split([' ', ';']).filter(|s| s.starts_with('\'')) {
            assert!(
                source == "'none'" || source == "'self'" || source.starts_with("'sha256-"),
                "{source} in {csp}"
            );
        }
        for directive in ["script-src", "style-src"] {
            let sources = csp
                .split("; ")
                .find_map(|d| d.strip_prefix(directive))
                .unwrap_or_else(|| panic!("no {directive}: {csp}"));
            assert_eq!(sources.matches("'sha256-").count(), 1, "{csp}");
        }
        // Hashes cover elements only: the markup must have no inline
        // `style="…"` attributes or `on…=` event handlers, and no element
        // with attributes that `inline_hashes` would skip.
        let page = page();
        let markup: String = page
            .split("<script>")
            .map(|part| {
                part.split_once("</script>")
                    .map_or(part, |(_, after)| after)
            })
            .collect();
        let markup: String = markup
            .split("<style>")
            .map(|part| part.split_once("</style>").map_or(part, |(_, after)| after))
            .collect();
        assert!(!markup.contains(" style="), "an inline style attribute");
        assert!(!markup.contains("<script ") && !markup.contains("<style "));
        let handler = markup.split(|c: char| c.is_whitespace()).any(|word| {
            word.strip_prefix("on").is_some_and(|rest| {
                rest.split_once('=').is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase())
                })
            })
        });
        assert!(!handler, "an inline event handler");
    }

    #[test]
    fn head_answers_have_no_body() {
        let r = Response::text(200, "ok");
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(full.ends_with("\r\n\r\nok\n"), "{full}");
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3"));
    }
}
