//! The handshake's decision, apart from its I/O: the first frame read as a
//! `connect` request ([`parse_connect`]) and the pure auth step
//! ([`authorize`]: protocol, shared token, device proof). Both return a
//! typed [`Rejection`] that carries the error to answer, the close code and
//! the metrics result, so nothing is guessed back from strings or close
//! codes. Device admission (part 10) goes inside [`authorize`].

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::metrics::HandshakeResult;
use super::registry::{JoinToken, Pin, TokenRecord};
use crate::config::Secret;
use crate::presence::PresenceKey;
use crate::protocol::device_auth::{self, Expected};
use crate::protocol::join_token::JoinTokenState;
use crate::protocol::{
    method, scope, ConnectParams, ErrorCode, ErrorDetailCode, ErrorShape, Frame, Request, Role,
    MIN_NODE_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// Why a handshake ended without a session.
#[derive(Debug)]
pub struct Rejection {
    /// The error response, when the peer sent a request it can be tied to
    /// (boxed: a rejection travels through `Result`s).
    pub response: Option<Box<Frame>>,
    pub close: CloseCode,
    /// The close reason (cut to 123 bytes when sent) and the log's reason.
    pub reason: String,
    /// How it counts in `clawnode_handshakes_total`.
    pub result: HandshakeResult,
    /// The detail code sent, when the answer carried one.
    pub detail: Option<ErrorDetailCode>,
}

impl Rejection {
    /// A close without an answer (nothing to tie an answer to).
    pub fn close(close: CloseCode, reason: impl Into<String>, result: HandshakeResult) -> Self {
        Rejection {
            response: None,
            close,
            reason: reason.into(),
            result,
            detail: None,
        }
    }

    /// The peer left, or the gateway stopped, before `connect`.
    pub fn closed(close: CloseCode, reason: impl Into<String>) -> Self {
        Rejection::close(close, reason, HandshakeResult::Closed)
    }

    /// No `connect` within the handshake deadline.
    pub fn timed_out() -> Self {
        Rejection::close(
            CloseCode::Policy,
            "handshake timeout",
            HandshakeResult::Timeout,
        )
    }

    /// An error answer to request `id`, then a close with `close`. A refused
    /// credential (an `AUTH_*`/`DEVICE_*` detail) counts as `auth_failed`,
    /// anything else as `rejected`.
    pub fn reply(id: &str, error: ErrorShape, close: CloseCode) -> Self {
        let detail = error.detail_code();
        let result = if detail.is_some_and(ErrorDetailCode::is_auth_failure) {
            HandshakeResult::AuthFailed
        } else {
            HandshakeResult::Rejected
        };
        Rejection {
            reason: error.message.clone(),
            response: Some(Box::new(Frame::err(id, error))),
            close,
            result,
            detail,
        }
    }

    /// Whether this refusal counts against the address's auth rate limit
    /// (a missing or wrong shared token, a wrong device token).
    pub fn counts_against_rate_limit(&self) -> bool {
        matches!(
            self.detail,
            Some(
                ErrorDetailCode::AuthTokenMissing
                    | ErrorDetailCode::AuthTokenMismatch
                    | ErrorDetailCode::AuthDeviceTokenMismatch
            )
        )
    }

    /// The reason its log summary counts it under: the detail code, else
    /// the error code, else what ended it (`HANDSHAKE_TIMEOUT`,
    /// `CLOSED_BEFORE_CONNECT`, `FRAME_TOO_LARGE`, `INVALID_FRAME`).
    pub fn summary_reason(&self) -> String {
        match (self.log_code(), self.result) {
            ("-", HandshakeResult::Timeout) => "HANDSHAKE_TIMEOUT".into(),
            ("-", HandshakeResult::Closed) => "CLOSED_BEFORE_CONNECT".into(),
            ("-", _) if self.close == CloseCode::Size => "FRAME_TOO_LARGE".into(),
            ("-", _) => "INVALID_FRAME".into(),
            (code, _) => code.to_string(),
        }
    }

    /// The code logged: the detail code, else the error code, else `-`.
    pub fn log_code(&self) -> &str {
        match (&self.detail, &self.response) {
            (Some(d), _) => d.as_str(),
            (None, Some(frame)) => match &**frame {
                Frame::Res(res) => res.error.as_ref().map_or("-", |e| e.code.as_str()),
                _ => "-",
            },
            _ => "-",
        }
    }
}

/// The first request of a connection: `connect` and its parameters.
#[derive(Debug)]
pub struct ConnectRequest {
    pub id: String,
    pub params: ConnectParams,
}

/// Reads the first text frame as a `connect` request: within the pre-auth
/// size limit, a request (answered with its id when it can be found, else
/// closed), method `connect`, valid parameters.
pub fn parse_connect(text: &str, max_preauth_payload: usize) -> Result<ConnectRequest, Rejection> {
    if text.len() > max_preauth_payload {
        return Err(Rejection::close(
            CloseCode::Size,
            format!(
                "frame of {} bytes exceeds the {max_preauth_payload} byte limit before connect",
                text.len(),
            ),
            HandshakeResult::Rejected,
        ));
    }
    // A request we cannot read but can tie to its id is answered.
    let req = Request::parse(text).map_err(|bad| match bad.request_id {
        Some(id) => Rejection::reply(
            &id,
            ErrorShape::invalid_request(format!("invalid request frame: {}", bad.why)),
            CloseCode::Policy,
        ),
        None => Rejection::close(
            CloseCode::Policy,
            "invalid request frame",
            HandshakeResult::Rejected,
        ),
    })?;
    let invalid = |message: String| {
        Rejection::reply(
            &req.id,
            ErrorShape::invalid_request(message),
            CloseCode::Policy,
        )
    };
    if req.method != method::CONNECT {
        return Err(invalid(
            "invalid handshake: first request must be connect".into(),
        ));
    }
    let params = ConnectParams::from_value(req.params.clone())
        .map_err(|e| invalid(format!("invalid connect params: {e}")))?;
    params
        .client
        .validate()
        .map_err(|e| invalid(format!("invalid connect params: {e}")))?;
    Ok(ConnectRequest { id: req.id, params })
}

/// What the gateway knows when it decides.
#[derive(Clone, Copy)]
pub struct AuthInput<'a> {
    /// The challenge this connection was sent.
    pub nonce: &'a str,
    pub now_ms: u64,
    /// The fleet's join token, granting role `node` only (`None`: auth
    /// disabled, loopback only).
    pub token: Option<&'a Secret>,
    /// The operator credential (`<state-dir>/operator.token`): any role,
    /// any scope. `None` with a join token: no operator connects by token.
    pub operator_token: Option<&'a Secret>,
    /// Where operators find their credential, for the refusal of the join
    /// token asking for role operator (e.g. `/var/lib/clawnode/operator.token`).
    pub operator_token_hint: &'a str,
    /// The peer's address is rate limited for this long (ms), after too
    /// many failed tokens.
    pub rate_limited_for_ms: Option<u64>,
    /// Whether a device id is one the gateway has seen before; asked only
    /// after the device proved its key, for a rate-limited address or a
    /// join token with no use left.
    pub known_device: &'a dyn Fn(&str) -> bool,
    /// The stored device token of a device for a role (one primary-key
    /// read); asked only after the device proved its key, and only when
    /// the connect carries a token to check against it.
    pub device_token: &'a DeviceTokenLookup<'a>,
    /// The created join token whose secret has this SHA-256; asked only
    /// for a token that is neither of the two above, with its digest (the
    /// secret is hashed first, so the lookup's timing says nothing about it).
    pub join_token: &'a dyn Fn(&[u8; 32]) -> JoinTokenLookup,
}

/// What the registry knows of a presented token's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinTokenLookup {
    NotFound,
    Found(JoinToken),
    /// The registry cannot answer (a disk error).
    Unavailable,
}

/// [`AuthInput::device_token`]: `Err` when the registry cannot answer.
pub type DeviceTokenLookup<'a> = dyn Fn(&str, Role) -> anyhow::Result<Option<TokenRecord>> + 'a;

/// Which credential let a connection in: what it may be is decided from
/// this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Authentication is disabled (`auth = "none"`, loopback only): full
    /// trust, as before.
    Open,
    /// The fleet's join token (`gateway.token`): role `node` only.
    JoinToken,
    /// The operator token (`operator.token`): any role, any scope.
    OperatorToken,
    /// A created join token (`clawnode join-token create`), live: role
    /// `node` only, as the join token file. A new device enrolling with it
    /// takes one of its uses (in the registry, when its record is stored).
    EnrolmentToken { id: String },
    /// A device token the gateway issued to this device for the role it
    /// asks for, with the device's signature: that role only, and for an
    /// operator device the scopes approved with the token (an approved
    /// operator device).
    DeviceToken,
}

impl Credential {
    /// Whether this credential may connect with `role` (a device token was
    /// looked up for the role asked for, so it covers it).
    pub fn allows(&self, role: Role) -> bool {
        match self {
            Credential::Open | Credential::OperatorToken | Credential::DeviceToken => true,
            Credential::JoinToken | Credential::EnrolmentToken { .. } => role == Role::Node,
        }
    }

    /// The created join token's id, for a connection let in by one.
    pub fn join_token_id(&self) -> Option<&str> {
        match self {
            Credential::EnrolmentToken { id } => Some(id),
            _ => None,
        }
    }

    /// Its name in logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Credential::Open => "none",
            Credential::JoinToken => "join-token",
            Credential::EnrolmentToken { .. } => "created-join-token",
            Credential::OperatorToken => "operator-token",
            Credential::DeviceToken => "device-token",
        }
    }

    /// Whether the gateway issues a device token to a device let in with
    /// this credential: yes for the join tokens and the operator token (a device
    /// token already presented and valid is kept instead); a device token
    /// is the device's own already; without auth there is nothing to keep.
    pub fn issues_device_token(&self) -> bool {
        matches!(
            self,
            Credential::JoinToken | Credential::OperatorToken | Credential::EnrolmentToken { .. }
        )
    }
}

/// A connection let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The protocol version both speak.
    pub protocol: u32,
    pub role: Role,
    /// The credential that let it in.
    pub credential: Credential,
    /// The scopes granted: none for nodes; what an operator asked for (the
    /// operator token is full trust, as OpenClaw's gateway token is).
    pub scopes: Vec<String>,
    /// The device the connection proved it holds the key of.
    pub device_id: Option<String>,
    /// When the connect's `auth.deviceToken` is this device's valid token
    /// for the role: when it was issued (the gateway keeps it, and echoes
    /// it in `hello-ok`, instead of issuing another).
    pub device_token_issued_at_ms: Option<u64>,
}

/// The auth step: protocol version, shared token (and its rate limit), and
/// the device proof (a node must have one). Pure: the same request and
/// input always give the same answer.
///
/// The token is compared with the operator token and the join token file
/// (both, in constant time); when it is neither, its SHA-256 is looked up
/// among the created join tokens ([`AuthInput::join_token`]): a live one
/// lets a node in as [`Credential::EnrolmentToken`]; an expired or revoked
/// one is refused ([`join_token_refused`]), and so is a used-up one unless
/// the device proved it is one the gateway knows (reconnecting takes no
/// use). Its use is taken when a new device's record is stored (the
/// registry's `claim`, where two cannot both take the last).
///
/// The rate limit is the address's (after [`AUTH_FAILURE_LIMIT`] wrong
/// tokens from it), and an address is often shared: a NAT, a proxy, every
/// client on the gateway's own host. So a client whose signature proves a
/// device the gateway has seen before is not held to it — others' failures
/// cannot lock it out, and it cannot be spoofed without the device's key
/// (the signature covers this connection's challenge). Every other client
/// — no device, an unknown one, a proof that fails — is refused with
/// `AUTH_RATE_LIMITED` without its token being looked at. A known device
/// with a wrong token is refused, and counted, like anyone else.
///
/// [`AUTH_FAILURE_LIMIT`]: super::state::AUTH_FAILURE_LIMIT
pub fn authorize(req: &ConnectRequest, input: &AuthInput<'_>) -> Result<Admitted, Rejection> {
    let params = &req.params;
    let refuse = |error: ErrorShape| Rejection::reply(&req.id, error, CloseCode::Policy);
    let role = params.role();
    let protocol = negotiate(params).ok_or_else(|| {
        Rejection::reply(
            &req.id,
            ErrorShape::invalid_request(format!(
                "protocol mismatch: this gateway speaks {PROTOCOL_VERSION} (and {MIN_NODE_PROTOCOL_VERSION} for nodes), client offered {}..{}",
                params.min_protocol, params.max_protocol
            ))
            .with_detail(ErrorDetailCode::ProtocolMismatch),
            CloseCode::Protocol,
        )
    })?;

    // The device proof, when there is one: checked once, first when the
    // address is rate limited, else after the token.
    let prove = || match &params.device {
        None => Ok(None),
        Some(device) => {
            let expected = Expected::for_connect(params, input.nonce, input.now_ms);
            device_auth::verify(device, &expected)
                .map(|_| Some(device.id.clone()))
                .map_err(|e| refuse(ErrorShape::invalid_request(e.message).with_detail(e.code)))
        }
    };
    let mut proof = None;
    let mut credential = Credential::Open;
    let mut device_token: Option<TokenRecord> = None;
    if let Some(expected) = input.token {
        if let Some(retry_after) = input.rate_limited_for_ms {
            let proven = prove();
            if !matches!(&proven, Ok(Some(id)) if (input.known_device)(id)) {
                return Err(refuse(
                    ErrorShape::invalid_request(
                        "unauthorized: too many failed attempts; retry later",
                    )
                    .with_detail(ErrorDetailCode::AuthRateLimited)
                    .with_retry_after(retry_after),
                ));
            }
            proof = Some(proven);
        }
        let mismatch = |detail: ErrorDetailCode, message: &str| {
            Some(ErrorShape::invalid_request(message).with_detail(detail))
        };
        let mut failure = match params.token() {
            None | Some("") => mismatch(
                ErrorDetailCode::AuthTokenMissing,
                "unauthorized: gateway token missing (configure the client's token)",
            ),
            // Both are compared, whichever matches, so timing says
            // nothing about which one it was.
            Some(given) => {
                let operator = input
                    .operator_token
                    .is_some_and(|t| tokens_match(given, t.expose()));
                let join = tokens_match(given, expected.expose());
                if operator {
                    credential = Credential::OperatorToken;
                    None
                } else if join {
                    credential = Credential::JoinToken;
                    None
                } else {
                    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                    match (input.join_token)(&digest) {
                        JoinTokenLookup::NotFound => mismatch(
                            ErrorDetailCode::AuthTokenMismatch,
                            "unauthorized: gateway token mismatch",
                        ),
                        JoinTokenLookup::Unavailable => return Err(registry_unavailable(req)),
                        JoinTokenLookup::Found(token) => {
                            let live = match token.state(input.now_ms) {
                                JoinTokenState::Active => true,
                                // Enrols no new device; one already known
                                // (its enrolment is not a new use) gets in.
                                JoinTokenState::UsedUp => {
                                    let proven = proof.take().unwrap_or_else(prove);
                                    let known =
                                        matches!(&proven, Ok(Some(id)) if (input.known_device)(id));
                                    proof = Some(proven);
                                    known
                                }
                                JoinTokenState::Expired | JoinTokenState::Revoked => false,
                            };
                            if live {
                                credential = Credential::EnrolmentToken { id: token.id };
                                None
                            } else {
                                // Refused, unless the device's own token
                                // (below) lets it in: an enrolled agent
                                // keeps the join token it came with.
                                Some(join_token_refusal(&token, input.now_ms))
                            }
                        }
                    }
                }
            }
        };
        // No shared token: a device token of the device that signed, for
        // the role it asks for (`auth.deviceToken`, else `auth.token`, as
        // OpenClaw's gateway reads it). A failed proof keeps the shared
        // token's refusal (counted), as before.
        if failure.is_some() {
            if let Some((candidate, explicit)) = device_token_candidate(params) {
                let proven = proof.take().unwrap_or_else(prove);
                if let Ok(Some(device_id)) = &proven {
                    match check_device_token(req, input, device_id, candidate, explicit)? {
                        DeviceTokenCheck::Valid(record) => {
                            credential = Credential::DeviceToken;
                            device_token = Some(record);
                            failure = None;
                        }
                        DeviceTokenCheck::Refused(error) => failure = Some(error),
                        DeviceTokenCheck::NotTheToken => {}
                    }
                }
                proof = Some(proven);
            }
        }
        if let Some(error) = failure {
            return Err(refuse(error));
        }
        if !credential.allows(role) {
            let which = match credential.join_token_id() {
                Some(id) => format!("join token {id}"),
                None => "the fleet's join token".to_string(),
            };
            return Err(refuse(
                ErrorShape::invalid_request(format!(
                    "unauthorized: this token is {which} and grants role node only; operators \
                     use {} (clawnode presence/forget on the gateway host read it automatically)",
                    input.operator_token_hint
                ))
                .with_detail(ErrorDetailCode::AuthScopeMismatch),
            ));
        }
    }

    let device_id = match proof.unwrap_or_else(prove)? {
        None if role == Role::Node => {
            return Err(refuse(
                ErrorShape::new(ErrorCode::NotPaired, "device identity required")
                    .with_detail(ErrorDetailCode::DeviceIdentityRequired),
            ))
        }
        device_id => device_id,
    };

    let scopes = match role {
        Role::Node => Vec::new(),
        Role::Operator => params.scopes.clone(),
    };
    // A device token asks for no more than it was approved with.
    if let Some(record) = &device_token {
        if let Some(missing) = scopes.iter().find(|s| !grants(&record.scopes, s)) {
            return Err(refuse(
                ErrorShape::invalid_request(format!(
                    "unauthorized: device token scope mismatch ({} is not approved for this \
                     device; re-pair it with the operator token, or approve the scope)",
                    crate::safe_text::escape(missing)
                ))
                .with_detail(ErrorDetailCode::AuthScopeMismatch),
            ));
        }
    }
    // Let in by a shared token but presenting its device token too: kept
    // when it is still the device's valid one (no new token is issued).
    if let (None, Some(id), Some(presented)) = (&device_token, &device_id, params.device_token()) {
        if credential.issues_device_token() {
            let stored = (input.device_token)(id, role).map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "cannot read a device token");
                registry_unavailable(req)
            })?;
            device_token = stored.filter(|r| r.matches(presented));
        }
    }
    Ok(Admitted {
        protocol,
        role,
        credential,
        scopes,
        device_id,
        device_token_issued_at_ms: device_token.map(|r| r.issued_at_ms),
    })
}

/// The device token a connect presents: `auth.deviceToken` (`true`: sent
/// as a device token), else `auth.token` (it may be one: OpenClaw's
/// gateway tries it as such too).
pub(crate) fn device_token_candidate(params: &ConnectParams) -> Option<(&str, bool)> {
    match (params.device_token(), params.token()) {
        (Some(t), _) if !t.is_empty() => Some((t, true)),
        (_, Some(t)) if !t.is_empty() => Some((t, false)),
        _ => None,
    }
}

enum DeviceTokenCheck {
    /// The device's valid token for the role.
    Valid(TokenRecord),
    /// Sent as a device token and not valid: refuse with this.
    Refused(ErrorShape),
    /// A shared token that matched nothing: its own refusal stands.
    NotTheToken,
}

/// Checks `candidate` against `device_id`'s stored token for the role asked
/// for: one read, the digests compared in constant time.
fn check_device_token(
    req: &ConnectRequest,
    input: &AuthInput<'_>,
    device_id: &str,
    candidate: &str,
    explicit: bool,
) -> Result<DeviceTokenCheck, Rejection> {
    let role = req.params.role();
    let stored = (input.device_token)(device_id, role).map_err(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot read a device token");
        registry_unavailable(req)
    })?;
    Ok(match stored {
        Some(record) if record.matches(candidate) => DeviceTokenCheck::Valid(record),
        _ if explicit => DeviceTokenCheck::Refused(
            ErrorShape::invalid_request(format!(
                "unauthorized: device token mismatch (it was rotated or revoked, or is not this \
                 device's token for role {}); connect once with the gateway token to be issued \
                 a new one, or rotate/reissue it",
                role.as_str()
            ))
            .with_detail(ErrorDetailCode::AuthDeviceTokenMismatch),
        ),
        _ => DeviceTokenCheck::NotTheToken,
    })
}

/// The refusal of a presence key (an instance id, or a device id a row is
/// keyed by) pinned to another device key.
pub fn pinned_elsewhere(req: &ConnectRequest, key: &PresenceKey, pin: &Pin) -> Rejection {
    let id = req
        .params
        .client
        .instance_id
        .as_deref()
        .map(str::trim)
        .unwrap_or(key.as_str());
    Rejection::reply(
        &req.id,
        ErrorShape::invalid_request(format!(
            "instance id {id} is pinned to another device key ({}, first seen{}); if this host \
             was re-imaged, run `clawnode forget {id}` on the gateway host",
            short(&pin.device_id),
            pin.display_name
                .as_deref()
                .map(|n| format!(" as {n}"))
                .unwrap_or_default(),
        ))
        .with_detail(ErrorDetailCode::InstanceIdPinned),
        CloseCode::Policy,
    )
}

/// The refusal when the device registry cannot answer (a disk error): the
/// pin cannot be checked, so the connection is not let in; retry later.
pub fn registry_unavailable(req: &ConnectRequest) -> Rejection {
    Rejection::reply(
        &req.id,
        ErrorShape::new(
            ErrorCode::Unavailable,
            "the gateway cannot read its device registry; retry later",
        )
        .with_retry_after(5_000),
        CloseCode::Again,
    )
}

/// The refusal of a created join token that admits nobody now (expired,
/// revoked) or enrols no new device (used up): `AUTH_TOKEN_MISMATCH`, as
/// for any token that does not let the client in — OpenClaw's clients (and
/// ours) then try their device token — with `details.reason` saying why
/// and `details.joinTokenId`.
pub fn join_token_refused(request_id: &str, token: &JoinToken, now_ms: u64) -> Rejection {
    Rejection::reply(
        request_id,
        join_token_refusal(token, now_ms),
        CloseCode::Policy,
    )
}

/// The error of [`join_token_refused`].
fn join_token_refusal(token: &JoinToken, now_ms: u64) -> ErrorShape {
    let id = crate::safe_text::escape(&token.id);
    let (reason, why) = match token.state(now_ms) {
        JoinTokenState::Revoked => ("join-token-revoked", "was revoked by an operator".into()),
        JoinTokenState::Expired => (
            "join-token-expired",
            format!(
                "expired {} ago",
                short_duration(now_ms.saturating_sub(token.expires_at_ms))
            ),
        ),
        // Active: taken by another device a moment ago, in a race.
        JoinTokenState::UsedUp | JoinTokenState::Active => (
            "join-token-used-up",
            format!(
                "has enrolled as many new devices as it may ({} of {})",
                token.used, token.uses
            ),
        ),
    };
    let mut error = ErrorShape::invalid_request(format!(
        "unauthorized: join token {id} {why}; an operator creates a new one on the gateway \
         host with `clawnode join-token create`"
    ));
    error.details = Some(serde_json::json!({
        "code": ErrorDetailCode::AuthTokenMismatch.as_str(),
        "reason": reason,
        "joinTokenId": token.id,
    }));
    error
}

/// "3s", "5m", "2h", "4d".
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The refusal of a connection let in by a device token that was rotated
/// or revoked before it was registered.
pub fn device_token_retired(req: &ConnectRequest) -> Rejection {
    Rejection::reply(
        &req.id,
        ErrorShape::invalid_request(
            "unauthorized: device token mismatch (rotated or revoked by an operator while \
             connecting); connect once with the gateway token to be issued a new one",
        )
        .with_detail(ErrorDetailCode::AuthDeviceTokenMismatch),
        CloseCode::Policy,
    )
}

/// The close reason of a connection replaced by a newer one of the same
/// device or row (at most 123 bytes).
pub fn replaced_reason(bound: usize) -> String {
    format!(
        "replaced by a newer connection of this device or instance id \
         (max_connections_per_device = {bound})"
    )
}

/// Whether a client with `role` and `scopes` reads the presence list (its
/// hello-ok snapshot and `presence` events): operators with
/// `operator.read`, as OpenClaw projects it; nodes get an empty snapshot
/// and no events.
pub fn reads_presence(role: Role, scopes: &[String]) -> bool {
    role == Role::Operator && grants(scopes, scope::OPERATOR_READ)
}

/// Whether `scopes` grant `needed`: `operator.admin` implies every scope,
/// `operator.write` implies `operator.read`.
pub fn grants(scopes: &[String], needed: &str) -> bool {
    let has = |s: &str| scopes.iter().any(|x| x == s);
    has(scope::OPERATOR_ADMIN)
        || has(needed)
        || (needed == scope::OPERATOR_READ && has(scope::OPERATOR_WRITE))
}

/// Picks the protocol version: 4 when the client's range allows it, 3 for
/// nodes that only speak 3, otherwise none.
fn negotiate(params: &ConnectParams) -> Option<u32> {
    let offers = |v: u32| params.min_protocol <= v && v <= params.max_protocol;
    if offers(PROTOCOL_VERSION) {
        Some(PROTOCOL_VERSION)
    } else if params.role() == Role::Node && offers(MIN_NODE_PROTOCOL_VERSION) {
        Some(MIN_NODE_PROTOCOL_VERSION)
    } else {
        None
    }
}

/// Compares tokens through their digests, so timing says nothing about
/// how much of the token was right.
pub fn tokens_match(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The first 12 characters of a device id, for messages.
fn short(device_id: &str) -> &str {
    device_id.get(..12).unwrap_or(device_id)
}

/// IPv4-mapped IPv6 addresses are shown as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceIdentity;
    use crate::protocol::{ClientInfo, ConnectAuth, DeviceProof};
    use serde_json::{json, Value};

    const NONCE: &str = "nonce-1";
    const NOW: u64 = 1_800_000_000_000;

    fn client(mode: &str) -> ClientInfo {
        ClientInfo {
            id: "x".into(),
            display_name: None,
            version: "1".into(),
            platform: "linux".into(),
            device_family: None,
            model_identifier: None,
            mode: mode.into(),
            instance_id: None,
        }
    }

    fn params(role: Role, min: u32, max: u32) -> ConnectParams {
        ConnectParams {
            min_protocol: min,
            max_protocol: max,
            client: client(if role == Role::Node { "node" } else { "ui" }),
            role: Some(role),
            scopes: vec![],
            caps: vec![],
            commands: vec![],
            auth: None,
            device: None,
        }
    }

    fn request(params: ConnectParams) -> ConnectRequest {
        ConnectRequest {
            id: "c1".into(),
            params,
        }
    }

    fn input<'a>(token: Option<&'a Secret>) -> AuthInput<'a> {
        AuthInput {
            nonce: NONCE,
            now_ms: NOW,
            token,
            operator_token: None,
            operator_token_hint: "/srv/gw/operator.token",
            rate_limited_for_ms: None,
            known_device: &|_| false,
            join_token: &|_| JoinTokenLookup::NotFound,
            device_token: &|_, _| Ok(None),
        }
    }

    fn with_token(mut p: ConnectParams, token: &str) -> ConnectParams {
        p.auth = Some(ConnectAuth {
            token: Some(token.into()),
            ..ConnectAuth::default()
        });
        p
    }

    /// A node's connect with `scopes`, signed by `identity` for `nonce` at
    /// `now` over what it sends (the v3 payload, as the agent signs).
    fn signed_node(
        identity: &DeviceIdentity,
        token: &str,
        nonce: &str,
        now: u64,
        scopes: &[String],
    ) -> ConnectParams {
        let mut p = with_token(params(Role::Node, 3, 4), token);
        p.scopes = scopes.to_vec();
        let signature = identity.sign(&crate::protocol::device_auth::DeviceAuthPayload {
            device_id: identity.device_id(),
            client_id: &p.client.id,
            client_mode: &p.client.mode,
            role: Role::Node.as_str(),
            scopes,
            signed_at_ms: now,
            token: Some(token),
            nonce,
            platform: Some(&p.client.platform),
            device_family: p.client.device_family.as_deref(),
        });
        p.device = Some(DeviceProof {
            id: identity.device_id().to_string(),
            public_key: identity.public_key().to_string(),
            signature,
            signed_at: now,
            nonce: nonce.to_string(),
        });
        p
    }

    fn rejected(r: Result<Admitted, Rejection>) -> Rejection {
        match r {
            Ok(a) => panic!("admitted: {a:?}"),
            Err(r) => r,
        }
    }

    fn detail(r: &Rejection) -> Option<&'static str> {
        r.detail.map(ErrorDetailCode::as_str)
    }

    #[test]
    fn protocol_negotiation() {
        assert_eq!(negotiate(&params(Role::Operator, 3, 4)), Some(4));
        assert_eq!(negotiate(&params(Role::Operator, 4, 9)), Some(4));
        assert_eq!(negotiate(&params(Role::Operator, 3, 3)), None);
        assert_eq!(negotiate(&params(Role::Node, 3, 3)), Some(3));
        assert_eq!(negotiate(&params(Role::Node, 5, 6)), None);
        assert_eq!(negotiate(&params(Role::Node, 1, 2)), None);
    }

    #[test]
    fn protocol_mismatch_is_rejected_with_a_protocol_close() {
        let r = rejected(authorize(
            &request(params(Role::Operator, 1, 2)),
            &input(None),
        ));
        assert_eq!(detail(&r), Some("PROTOCOL_MISMATCH"));
        assert_eq!(r.close, CloseCode::Protocol);
        assert_eq!(r.result, HandshakeResult::Rejected);
        assert!(r.reason.contains("client offered 1..2"), "{}", r.reason);
    }

    #[test]
    fn a_missing_or_wrong_token_is_an_auth_failure_that_counts_against_the_rate_limit() {
        let token = Secret::new("right");
        let r = rejected(authorize(
            &request(params(Role::Operator, 3, 4)),
            &input(Some(&token)),
        ));
        assert_eq!(detail(&r), Some("AUTH_TOKEN_MISSING"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
        assert!(r.counts_against_rate_limit());
        let wrong = with_token(params(Role::Operator, 3, 4), "wrong");
        let r = rejected(authorize(&request(wrong), &input(Some(&token))));
        assert_eq!(detail(&r), Some("AUTH_TOKEN_MISMATCH"));
        assert_eq!(r.close, CloseCode::Policy);
        assert!(r.counts_against_rate_limit());
        let Some(Frame::Res(res)) = r.response.as_deref() else {
            panic!("an answer to c1")
        };
        assert_eq!(res.id, "c1");
    }

    #[test]
    fn a_rate_limited_address_is_told_when_to_retry_even_with_the_right_token() {
        let (token, operator) = (Secret::new("join"), Secret::new("right"));
        let right = with_token(params(Role::Operator, 3, 4), "right");
        let limited = AuthInput {
            rate_limited_for_ms: Some(1234),
            operator_token: Some(&operator),
            ..input(Some(&token))
        };
        let r = rejected(authorize(&request(right), &limited));
        assert_eq!(detail(&r), Some("AUTH_RATE_LIMITED"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
        assert!(!r.counts_against_rate_limit());
        let Some(Frame::Res(res)) = r.response.as_deref() else {
            panic!("an answer")
        };
        assert_eq!(
            res.error.as_ref().and_then(|e| e.retry_after_ms),
            Some(1234)
        );
    }

    /// Finding 9: on a rate-limited address a proven known device gets in;
    /// no device, an unknown one, or a proof that fails stays limited, and
    /// a known device with a wrong token is refused (and counted).
    #[test]
    fn on_a_rate_limited_address_only_a_proven_known_device_gets_past() {
        let identity = DeviceIdentity::ephemeral("inst-1");
        let known_id = identity.device_id().to_string();
        let is_known = |id: &str| id == known_id;
        let token = Secret::new("t");
        let limited = AuthInput {
            rate_limited_for_ms: Some(1234),
            known_device: &is_known,
            ..input(Some(&token))
        };
        let code = |p: ConnectParams, input: &AuthInput<'_>| match authorize(&request(p), input) {
            Ok(_) => "admitted",
            Err(r) => detail(&r).unwrap_or("-"),
        };
        let known = signed_node(&identity, "t", NONCE, NOW, &[]);
        assert_eq!(code(known.clone(), &limited), "admitted");
        // The same known device id without its key's signature.
        let mut forged = known.clone();
        forged.device.as_mut().expect("a proof").signature = "AAAA".into();
        assert_eq!(code(forged, &limited), "AUTH_RATE_LIMITED");
        // A proof for another connection's challenge.
        let replayed = signed_node(&identity, "t", "another-nonce", NOW, &[]);
        assert_eq!(code(replayed, &limited), "AUTH_RATE_LIMITED");
        // A device never seen before, properly signed.
        let stranger = DeviceIdentity::ephemeral("inst-2");
        let unknown = signed_node(&stranger, "t", NONCE, NOW, &[]);
        assert_eq!(code(unknown, &limited), "AUTH_RATE_LIMITED");
        // No device at all, with the right token.
        let operator = with_token(params(Role::Operator, 3, 4), "t");
        assert_eq!(code(operator, &limited), "AUTH_RATE_LIMITED");
        // The known device with a wrong token: a mismatch, counted.
        let wrong = signed_node(&identity, "wrong", NONCE, NOW, &[]);
        let r = rejected(authorize(&request(wrong), &limited));
        assert_eq!(detail(&r), Some("AUTH_TOKEN_MISMATCH"));
        assert!(r.counts_against_rate_limit());
        // Not limited: nobody asks whether the device is known.
        let never = |_: &str| -> bool { panic!("asked without a rate limit") };
        let open = AuthInput {
            known_device: &never,
            ..input(Some(&token))
        };
        assert_eq!(code(known, &open), "admitted");
    }

    /// Part 10, roles by credential: the join token every host holds is
    /// a node's and nothing more; role operator needs the operator token,
    /// and the refusal names where it is. The operator token may connect as
    /// anything (a node too), as OpenClaw's gateway token does.
    #[test]
    fn the_join_token_grants_role_node_only_and_the_operator_token_any_role() {
        let (join, operator) = (Secret::new("join"), Secret::new("op"));
        let both = AuthInput {
            operator_token: Some(&operator),
            ..input(Some(&join))
        };
        let mut asks = with_token(params(Role::Operator, 3, 4), "join");
        asks.scopes = vec![scope::OPERATOR_READ.into()];
        let r = rejected(authorize(&request(asks.clone()), &both));
        assert_eq!(detail(&r), Some("AUTH_SCOPE_MISMATCH"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
        assert!(!r.counts_against_rate_limit(), "a right token is no guess");
        let Some(Frame::Res(res)) = r.response.as_deref() else {
            panic!("an answer to c1")
        };
        let e = res.error.as_ref().expect("an error");
        assert_eq!(e.code.as_str(), "INVALID_REQUEST");
        assert!(
            e.message.contains("join token and grants role node only")
                && e.message.contains("/srv/gw/operator.token"),
            "{}",
            e.message
        );
        // With no operator token configured, the same refusal.
        let r = rejected(authorize(&request(asks.clone()), &input(Some(&join))));
        assert_eq!(detail(&r), Some("AUTH_SCOPE_MISMATCH"));

        // The join token, as a signed node: let in, as a node.
        let identity = DeviceIdentity::ephemeral("inst-1");
        let node = signed_node(&identity, "join", NONCE, NOW, &[]);
        let a = authorize(&request(node), &both).expect("a node with the join token");
        assert_eq!((a.role, a.credential), (Role::Node, Credential::JoinToken));

        // The operator token: an operator with its scopes, or a node.
        let mut op = with_token(params(Role::Operator, 3, 4), "op");
        op.scopes = vec![scope::OPERATOR_ADMIN.into()];
        let a = authorize(&request(op), &both).expect("an operator");
        assert_eq!(a.credential, Credential::OperatorToken);
        assert_eq!(a.scopes, vec![scope::OPERATOR_ADMIN.to_string()]);
        let node = signed_node(&identity, "op", NONCE, NOW, &[]);
        let a = authorize(&request(node), &both).expect("a node with the operator token");
        assert_eq!(
            (a.role, a.credential),
            (Role::Node, Credential::OperatorToken)
        );

        // Neither: a mismatch, counted.
        let wrong = with_token(params(Role::Operator, 3, 4), "neither");
        let r = rejected(authorize(&request(wrong), &both));
        assert_eq!(detail(&r), Some("AUTH_TOKEN_MISMATCH"));
        assert!(r.counts_against_rate_limit());
    }

    fn join_token(expires_at_ms: u64, uses: u64, used: u64, revoked: bool) -> JoinToken {
        JoinToken {
            id: "0123456789ab".into(),
            description: None,
            created_at_ms: 0,
            created_by: None,
            expires_at_ms,
            uses,
            used,
            last_used_at_ms: None,
            revoked_at_ms: revoked.then_some(1),
        }
    }

    /// Part 6: a created join token is looked up by the SHA-256 of what
    /// was sent (never asked for the two configured tokens); live, it lets
    /// a node in as `EnrolmentToken`; expired or revoked it is refused with
    /// `AUTH_TOKEN_MISMATCH` and a reason; used up it still lets a device
    /// it knows in, and no new one.
    #[test]
    fn a_created_join_token_admits_nodes_while_live() {
        let (join, operator) = (Secret::new("join"), Secret::new("op"));
        let identity = DeviceIdentity::ephemeral("inst-1");
        let known_id = identity.device_id().to_string();
        let created = "cnjoin_abc";
        let digest: [u8; 32] = Sha256::digest(created.as_bytes()).into();
        let outcome = |token: JoinToken, sent: &str, role: Role, known: bool| {
            let lookup = |d: &[u8; 32]| {
                assert!(
                    sent != "join" && sent != "op",
                    "looked up a configured token"
                );
                if *d == digest {
                    JoinTokenLookup::Found(token.clone())
                } else {
                    JoinTokenLookup::NotFound
                }
            };
            let is_known = |id: &str| known && id == known_id;
            let input = AuthInput {
                operator_token: Some(&operator),
                join_token: &lookup,
                known_device: &is_known,
                ..input(Some(&join))
            };
            let p = match role {
                Role::Node => signed_node(&identity, sent, NONCE, NOW, &[]),
                Role::Operator => with_token(params(Role::Operator, 3, 4), sent),
            };
            authorize(&request(p), &input)
        };
        let live = join_token(NOW + 1, 2, 1, false);
        let a = outcome(live.clone(), created, Role::Node, false).expect("a live token");
        assert_eq!(
            a.credential,
            Credential::EnrolmentToken {
                id: "0123456789ab".into()
            }
        );
        assert_eq!(a.credential.join_token_id(), Some("0123456789ab"));
        // The configured tokens are compared first, never looked up.
        let a = outcome(live.clone(), "join", Role::Node, false).expect("the join token");
        assert_eq!(a.credential, Credential::JoinToken);
        // Role node only.
        let r = rejected(outcome(live.clone(), created, Role::Operator, false));
        assert_eq!(detail(&r), Some("AUTH_SCOPE_MISMATCH"));
        assert!(r.reason.contains("join token 0123456789ab"), "{}", r.reason);
        // Another secret: a mismatch.
        let r = rejected(outcome(live.clone(), "cnjoin_other", Role::Node, false));
        assert_eq!(detail(&r), Some("AUTH_TOKEN_MISMATCH"));
        assert!(r.reason.contains("gateway token mismatch"), "{}", r.reason);

        let reason = |r: &Rejection| match r.response.as_deref() {
            Some(Frame::Res(res)) => {
                let d = res.error.as_ref().and_then(|e| e.details.clone());
                d.map(|d| (d["reason"].clone(), d["joinTokenId"].clone()))
            }
            _ => None,
        };
        let cases = [
            (
                join_token(NOW - 90_000, 2, 0, false),
                "join-token-expired",
                "expired 1m ago",
            ),
            (
                join_token(NOW + 1, 2, 0, true),
                "join-token-revoked",
                "was revoked",
            ),
            (
                join_token(NOW + 1, 2, 2, false),
                "join-token-used-up",
                "(2 of 2)",
            ),
        ];
        for (token, code, says) in cases {
            let r = rejected(outcome(token, created, Role::Node, false));
            assert_eq!(detail(&r), Some("AUTH_TOKEN_MISMATCH"), "{code}");
            assert_eq!(r.result, HandshakeResult::AuthFailed);
            assert_eq!(
                reason(&r),
                Some((Value::from(code), Value::from("0123456789ab")))
            );
            assert!(
                r.reason.contains(says) && r.reason.contains("clawnode join-token create"),
                "{}",
                r.reason
            );
        }
        // Used up, a device it knows gets in (no new use); expired, not.
        let a = outcome(join_token(NOW + 1, 2, 2, false), created, Role::Node, true)
            .expect("a known device with a used-up token");
        assert!(matches!(a.credential, Credential::EnrolmentToken { .. }));
        let r = rejected(outcome(
            join_token(NOW, 2, 0, false),
            created,
            Role::Node,
            true,
        ));
        assert_eq!(detail(&r), Some("AUTH_TOKEN_MISMATCH"));

        // The registry cannot answer: unavailable, retry later.
        let down = AuthInput {
            join_token: &|_| JoinTokenLookup::Unavailable,
            ..input(Some(&join))
        };
        let p = signed_node(&identity, created, NONCE, NOW, &[]);
        let r = rejected(authorize(&request(p), &down));
        assert_eq!(r.log_code(), "UNAVAILABLE");
        assert!(!r.counts_against_rate_limit());
    }

    /// A signed connect of `identity` as `role` asking for `scopes`, with
    /// `auth` as given (the signature covers `auth.token`, else
    /// `auth.deviceToken`, as the agent signs).
    fn signed(
        identity: &DeviceIdentity,
        role: Role,
        scopes: &[String],
        token: Option<&str>,
        device_token: Option<&str>,
    ) -> ConnectParams {
        let mut p = params(role, 3, 4);
        p.scopes = scopes.to_vec();
        p.auth = Some(ConnectAuth {
            token: token.map(str::to_string),
            device_token: device_token.map(str::to_string),
        });
        let signature = identity.sign(&crate::protocol::device_auth::DeviceAuthPayload {
            device_id: identity.device_id(),
            client_id: &p.client.id,
            client_mode: &p.client.mode,
            role: role.as_str(),
            scopes,
            signed_at_ms: NOW,
            token: p.signature_token(),
            nonce: NONCE,
            platform: Some(&p.client.platform),
            device_family: p.client.device_family.as_deref(),
        });
        p.device = Some(DeviceProof {
            id: identity.device_id().to_string(),
            public_key: identity.public_key().to_string(),
            signature,
            signed_at: NOW,
            nonce: NONCE.to_string(),
        });
        p
    }

    fn token_record(device_id: &str, role: Role, token: &str, scopes: &[&str]) -> TokenRecord {
        TokenRecord {
            device_id: device_id.to_string(),
            role,
            sha256: Some(crate::gateway::registry::token_digest(token)),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            issued_at_ms: 77,
            rotated_at_ms: None,
            revoked_at_ms: None,
        }
    }

    /// Part 5: a device token and the signature of the same device let a
    /// node in without the join token, as role node only; another
    /// device's token, a revoked one, or one without the device's key is
    /// refused, and counted.
    #[test]
    fn a_device_token_with_its_devices_signature_admits_that_device_as_its_role() {
        let (join, operator) = (Secret::new("join"), Secret::new("op"));
        let node = DeviceIdentity::ephemeral("inst-1");
        let other = DeviceIdentity::ephemeral("inst-2");
        let (node_id, other_id) = (node.device_id().to_string(), other.device_id().to_string());
        let lookup = |id: &str, role: Role| -> anyhow::Result<Option<TokenRecord>> {
            Ok(match (id, role) {
                (id, Role::Node) if id == node_id => Some(token_record(id, role, "dt-node", &[])),
                (id, Role::Node) if id == other_id => Some(token_record(id, role, "dt-other", &[])),
                _ => None,
            })
        };
        let input = AuthInput {
            operator_token: Some(&operator),
            device_token: &lookup,
            ..input(Some(&join))
        };
        let code = |p: ConnectParams| match authorize(&request(p), &input) {
            Ok(a) => format!("{:?}", a.credential),
            Err(r) => detail(&r).unwrap_or("-").to_string(),
        };

        let a = authorize(
            &request(signed(&node, Role::Node, &[], None, Some("dt-node"))),
            &input,
        )
        .expect("admitted by its device token");
        assert_eq!(
            (a.role, a.credential, a.device_id.as_deref()),
            (Role::Node, Credential::DeviceToken, Some(node_id.as_str()))
        );
        assert_eq!(a.device_token_issued_at_ms, Some(77));
        // In `auth.token`, as OpenClaw's gateway also reads it.
        assert_eq!(
            code(signed(&node, Role::Node, &[], Some("dt-node"), None)),
            "DeviceToken"
        );
        // Another device's token, with this device's key.
        let r = rejected(authorize(
            &request(signed(&node, Role::Node, &[], None, Some("dt-other"))),
            &input,
        ));
        assert_eq!(detail(&r), Some("AUTH_DEVICE_TOKEN_MISMATCH"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
        assert!(r.counts_against_rate_limit());
        // ... sent in `auth.token`: the shared token's refusal stands.
        assert_eq!(
            code(signed(&node, Role::Node, &[], Some("dt-other"), None)),
            "AUTH_TOKEN_MISMATCH"
        );
        // This device's token asking for role operator: not its grant.
        assert_eq!(
            code(signed(&node, Role::Operator, &[], None, Some("dt-node"))),
            "AUTH_DEVICE_TOKEN_MISMATCH"
        );
        // Without the device's key: a proof that fails keeps the shared
        // token's refusal, counted; no proof at all is no device token.
        let mut forged = signed(&node, Role::Node, &[], None, Some("dt-node"));
        forged.device.as_mut().expect("proof").signature = "AAAA".into();
        assert_eq!(code(forged), "AUTH_TOKEN_MISSING");
        let mut bare = signed(&node, Role::Node, &[], None, Some("dt-node"));
        bare.device = None;
        assert_eq!(code(bare), "AUTH_TOKEN_MISSING");
        // A device token from another device's key, signed by it.
        assert_eq!(
            code(signed(&other, Role::Node, &[], None, Some("dt-node"))),
            "AUTH_DEVICE_TOKEN_MISMATCH"
        );
        // Revoked (no digest stored): refused.
        let revoked = |id: &str, role: Role| -> anyhow::Result<Option<TokenRecord>> {
            let mut r = token_record(id, role, "dt-node", &[]);
            r.sha256 = None;
            Ok(Some(r))
        };
        let r = rejected(authorize(
            &request(signed(&node, Role::Node, &[], None, Some("dt-node"))),
            &AuthInput {
                device_token: &revoked,
                ..input
            },
        ));
        assert_eq!(detail(&r), Some("AUTH_DEVICE_TOKEN_MISMATCH"));
        // A registry that cannot answer: retry later, not a refusal.
        let broken = |_: &str, _: Role| -> anyhow::Result<Option<TokenRecord>> {
            anyhow::bail!("disk I/O error")
        };
        let r = rejected(authorize(
            &request(signed(&node, Role::Node, &[], None, Some("dt-node"))),
            &AuthInput {
                device_token: &broken,
                ..input
            },
        ));
        assert_eq!(r.log_code(), "UNAVAILABLE");
        assert_eq!(r.close, CloseCode::Again);

        // The join token with the device's valid token: let in by the join
        // token, the device token kept (no new one is issued).
        let a = authorize(
            &request(signed(
                &node,
                Role::Node,
                &[],
                Some("join"),
                Some("dt-node"),
            )),
            &input,
        )
        .expect("join token");
        assert_eq!(a.credential, Credential::JoinToken);
        assert_eq!(a.device_token_issued_at_ms, Some(77));
        // ... with a stale one: let in, and a new one will be issued.
        let a = authorize(
            &request(signed(&node, Role::Node, &[], Some("join"), Some("old"))),
            &input,
        )
        .expect("join token");
        assert_eq!(a.device_token_issued_at_ms, None);
        assert!(a.credential.issues_device_token());
    }

    /// Part 1's approved operator device: the operator token and a device
    /// identity were issued an operator token with the scopes approved
    /// then; that token lets the device in as an operator with those scopes
    /// (or fewer), never more, and never as a node.
    #[test]
    fn an_operator_device_token_grants_its_approved_scopes_and_no_more() {
        let join = Secret::new("join");
        let device = DeviceIdentity::ephemeral("op-1");
        let id = device.device_id().to_string();
        let lookup = |d: &str, role: Role| -> anyhow::Result<Option<TokenRecord>> {
            Ok((d == id && role == Role::Operator)
                .then(|| token_record(d, role, "dt-op", &["operator.read", "operator.pairing"])))
        };
        let input = AuthInput {
            device_token: &lookup,
            ..input(Some(&join))
        };
        let asks = |scopes: &[&str]| {
            let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
            authorize(
                &request(signed(
                    &device,
                    Role::Operator,
                    &scopes,
                    None,
                    Some("dt-op"),
                )),
                &input,
            )
        };
        let a = asks(&["operator.read", "operator.pairing"]).expect("its approved scopes");
        assert_eq!(
            (a.role, a.credential),
            (Role::Operator, Credential::DeviceToken)
        );
        assert_eq!(a.scopes, vec!["operator.read", "operator.pairing"]);
        assert_eq!(
            asks(&["operator.read"]).expect("fewer").scopes,
            vec!["operator.read"]
        );
        for beyond in [
            &["operator.admin"][..],
            &["operator.read", "operator.write"],
        ] {
            let r = rejected(asks(beyond));
            assert_eq!(detail(&r), Some("AUTH_SCOPE_MISMATCH"), "{beyond:?}");
            assert!(
                r.reason.contains("device token scope mismatch"),
                "{}",
                r.reason
            );
        }
        let r = rejected(authorize(
            &request(signed(&device, Role::Node, &[], None, Some("dt-op"))),
            &input,
        ));
        assert_eq!(detail(&r), Some("AUTH_DEVICE_TOKEN_MISMATCH"));
    }

    #[test]
    fn without_auth_no_token_is_needed_and_the_operator_gets_its_scopes() {
        let mut p = params(Role::Operator, 3, 4);
        p.scopes = vec![scope::OPERATOR_READ.into()];
        let a = authorize(&request(p), &input(None)).expect("admitted");
        assert_eq!(a.protocol, PROTOCOL_VERSION);
        assert_eq!(a.role, Role::Operator);
        assert_eq!(a.scopes, vec![scope::OPERATOR_READ.to_string()]);
        assert_eq!(a.device_id, None);
        assert_eq!(a.credential, Credential::Open);
    }

    #[test]
    fn a_node_without_a_device_identity_is_refused() {
        let token = Secret::new("t");
        let p = with_token(params(Role::Node, 3, 4), "t");
        let r = rejected(authorize(&request(p), &input(Some(&token))));
        assert_eq!(detail(&r), Some("DEVICE_IDENTITY_REQUIRED"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
        assert!(!r.counts_against_rate_limit());
    }

    #[test]
    fn a_signed_node_is_admitted_with_its_device_and_no_scopes() {
        let identity = DeviceIdentity::ephemeral("inst-1");
        let token = Secret::new("t");
        let p = signed_node(&identity, "t", NONCE, NOW, &[]);
        let a = authorize(&request(p), &input(Some(&token))).expect("admitted");
        assert_eq!(a.role, Role::Node);
        assert!(a.scopes.is_empty());
        assert_eq!(a.device_id.as_deref(), Some(identity.device_id()));
        // A node asking for operator scopes gets none, signed or not.
        let admin = [scope::OPERATOR_ADMIN.to_string()];
        let p = signed_node(&identity, "t", NONCE, NOW, &admin);
        let a = authorize(&request(p), &input(Some(&token))).expect("admitted");
        assert!(a.scopes.is_empty(), "{a:?}");
        // A proof that does not cover what is sent is refused.
        let mut p = signed_node(&identity, "t", NONCE, NOW, &[]);
        p.client.mode = "ui".into();
        let r = rejected(authorize(&request(p), &input(Some(&token))));
        assert_eq!(detail(&r), Some("DEVICE_AUTH_SIGNATURE_INVALID"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
    }

    #[test]
    fn a_proof_for_another_challenge_is_refused() {
        let identity = DeviceIdentity::ephemeral("inst-1");
        let token = Secret::new("t");
        let p = signed_node(&identity, "t", "another-nonce", NOW, &[]);
        let r = rejected(authorize(&request(p), &input(Some(&token))));
        assert_eq!(detail(&r), Some("DEVICE_AUTH_NONCE_MISMATCH"));
        assert_eq!(r.result, HandshakeResult::AuthFailed);
    }

    /// Every device-proof failure reaches the client with its own code and
    /// counts as an auth failure, never against the token rate limit.
    #[test]
    fn each_device_proof_failure_is_refused_with_its_code() {
        let identity = DeviceIdentity::ephemeral("inst-1");
        let token = Secret::new("t");
        type Spoil = fn(&mut DeviceProof);
        let cases: [(&str, Spoil); 4] = [
            ("DEVICE_AUTH_PUBLIC_KEY_INVALID", |d| {
                d.public_key = "not-a-key".into()
            }),
            ("DEVICE_AUTH_DEVICE_ID_MISMATCH", |d| d.id = "0".repeat(64)),
            ("DEVICE_AUTH_SIGNATURE_EXPIRED", |d| {
                d.signed_at -= 11 * 60 * 1000
            }),
            ("DEVICE_AUTH_NONCE_REQUIRED", |d| d.nonce.clear()),
        ];
        for (code, spoil) in cases {
            let mut p = signed_node(&identity, "t", NONCE, NOW, &[]);
            spoil(p.device.as_mut().expect("a proof"));
            let r = rejected(authorize(&request(p), &input(Some(&token))));
            assert_eq!(detail(&r), Some(code));
            assert_eq!(r.result, HandshakeResult::AuthFailed, "{code}");
            assert!(!r.counts_against_rate_limit(), "{code}");
            assert_eq!(r.close, CloseCode::Policy, "{code}");
        }
    }

    #[test]
    fn the_first_frame_must_be_a_connect_request_within_the_preauth_limit() {
        let big = format!(
            r#"{{"type":"req","id":"a","method":"connect","params":{{"x":"{}"}}}}"#,
            "y".repeat(100)
        );
        let r = parse_connect(&big, 64).unwrap_err();
        assert_eq!(r.close, CloseCode::Size);
        assert!(r.response.is_none());
        let r = parse_connect(r#"{"type":"req","id":"a1","method":"health"}"#, 1024).unwrap_err();
        assert!(
            r.reason.contains("first request must be connect"),
            "{}",
            r.reason
        );
        assert_eq!(r.result, HandshakeResult::Rejected);
        assert_eq!(r.log_code(), "INVALID_REQUEST");
        let r = parse_connect("not json", 1024).unwrap_err();
        assert!(r.response.is_none() && r.close == CloseCode::Policy);
        let r = parse_connect(
            r#"{"type":"req","id":"a2","method":"connect","params":{"minProtocol":"x"}}"#,
            1024,
        )
        .unwrap_err();
        assert!(
            r.reason.starts_with("invalid connect params"),
            "{}",
            r.reason
        );
        let ok = json!({"type":"req","id":"a3","method":"connect","params":{
            "minProtocol":3,"maxProtocol":4,
            "client":{"id":"cli","version":"1","platform":"linux","mode":"cli"}}});
        let req = parse_connect(&ok.to_string(), 1024).expect("a connect");
        assert_eq!(req.id, "a3");
    }

    #[test]
    fn a_pinned_instance_names_the_other_key_and_the_way_out() {
        let mut p = params(Role::Node, 3, 4);
        p.client.instance_id = Some("inst-1".into());
        let pin = Pin {
            device_id: "abcdef0123456789".into(),
            pinned_at_ms: NOW,
            display_name: Some("web-1".into()),
        };
        let key = PresenceKey::normalize("inst-1").expect("a key");
        let r = pinned_elsewhere(&request(p), &key, &pin);
        assert_eq!(detail(&r), Some("INSTANCE_ID_PINNED"));
        assert_eq!(r.result, HandshakeResult::Rejected);
        assert!(r.reason.contains("abcdef012345") && r.reason.contains("clawnode forget inst-1"));
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", "abc"));
    }

    #[test]
    fn mapped_addresses_become_v4() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }
}
