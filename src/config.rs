//! Effective settings: command-line flags over environment over the config
//! file over defaults, resolved once at start-up into plain values.
//!
//! Secrets never come from the command line: a token is read from a file or
//! the environment, and [`Secret`] keeps it out of `Debug` output and logs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;

pub mod cidr;
mod table;
use table::{settings_table, AtLeastOne, Bool, Count, Secs, Whole};

use crate::logging::LogFormat;
use crate::origin::{HostName, Origin};
use crate::presence::{PresenceLimits, DEFAULT_MAX_ENTRIES, DEFAULT_TTL_MS};
use crate::tls::{ClientTls, Fingerprint, ServerTlsFiles, FINGERPRINT_FORMAT};

/// Read when it exists and no other file is named (`--config`,
/// `CLAWNODE_CONFIG`).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/clawnode/clawnode.toml";
pub const DEFAULT_URL: &str = "ws://127.0.0.1:18789";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:18789";
pub const GATEWAY_TOKEN_FILE: &str = "gateway.token";
/// The operator credential's file in the gateway's state directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";
/// Names the operator token's file (gateway and operator commands).
pub const OPERATOR_TOKEN_FILE_ENV: &str = "CLAWNODE_OPERATOR_TOKEN_FILE";
/// The state directory of root and of the packaged service.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/clawnode";

pub const DEFAULT_BEACON_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that reads nothing for this long is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The cap of an agent's reconnect backoff (waits of 15–30 s at the cap).
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Room for a reconnect while the gateway still holds a few connections
/// that died silently (found by the pings within two ticks).
pub const DEFAULT_MAX_CONNECTIONS_PER_DEVICE: usize = 4;

/// A secret string (a gateway token). `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

settings_table! {
    /// The config file (`/etc/clawnode/clawnode.toml` or `--config PATH`; the
    /// packaged copy documents every key). Unknown keys are errors.
    file FileConfig {
        url: Option<String>,
        token_file: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        display_name: Option<String>,
        log_level: Option<String>,
        log_format: Option<LogFormat>,
        tls_fingerprint: Option<String>,
        allow_insecure_ws: Option<bool>,
        #[serde(default)]
        gateway: GatewayFileConfig,
    }
    /// The agent's numbers, resolved (file over defaults).
    table AgentTuning {
        beacon_interval (beacon_interval_secs): Secs = DEFAULT_BEACON_INTERVAL,
        stats_interval (stats_interval_secs): Secs = DEFAULT_STATS_INTERVAL,
        /// The longest wait between an agent's reconnect attempts.
        reconnect_max (reconnect_max_secs): Secs = DEFAULT_RECONNECT_MAX,
    }
}

settings_table! {
    /// The `[gateway]` table.
    file GatewayFileConfig {
        enabled: Option<bool>,
        listen: Option<String>,
        auth: Option<AuthMode>,
        operator_token_file: Option<PathBuf>,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        public_names: Option<Vec<String>>,
        allowed_origins: Option<Vec<String>>,
        admission_cidrs: Option<Vec<String>>,
    }
    /// The gateway's numbers and switches, resolved (flags over file over
    /// defaults; only the presence limits have flags).
    table GatewayTuning {
        presence_ttl (presence_ttl_secs): Secs = Duration::from_millis(DEFAULT_TTL_MS),
        presence_max_entries (presence_max_entries): AtLeastOne = DEFAULT_MAX_ENTRIES,
        tick_interval (tick_interval_secs): Secs = DEFAULT_TICK_INTERVAL,
        handshake_timeout (handshake_timeout_secs): Secs = DEFAULT_HANDSHAKE_TIMEOUT,
        /// A client that reads nothing of what it is sent for this long is
        /// dropped.
        write_timeout (write_timeout_secs): Secs = DEFAULT_WRITE_TIMEOUT,
        max_connections (max_connections): Count = DEFAULT_MAX_CONNECTIONS,
        /// Simultaneous connections of one device key, and of one presence
        /// row: a new one past it replaces the oldest.
        max_connections_per_device (max_connections_per_device): Count = DEFAULT_MAX_CONNECTIONS_PER_DEVICE,
        /// Caps on connections still in their handshake.
        max_pending_handshakes (max_pending_handshakes): Count = AdmissionLimits::default().total,
        max_pending_handshakes_per_ip (max_pending_handshakes_per_ip): Count = AdmissionLimits::default().per_ip,
        /// The largest frame a client may send after `connect` (advertised
        /// as `policy.maxPayload`), 64 KiB to 64 MiB.
        max_payload (max_payload_bytes): Whole<65_536, 16_777_216> = 1024 * 1024,
        /// `GET /metrics` needs `Authorization: Bearer <token>`.
        metrics_require_token (metrics_require_token): Bool = false,
        /// How a new node device is admitted: `token` (approved on first
        /// use) or `manual` (pending until an operator approves it).
        admission (admission): AdmissionPolicy = Admission::Token,
    }
}

/// How a new node device (a valid device proof and token) is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// Approved on first use, its instance id pinned (the default).
    Token,
    /// Refused with `PAIRING_REQUIRED` and a request id until an operator
    /// approves it (`clawnode devices approve`).
    Manual,
}

/// The `admission` row's kind.
pub struct AdmissionPolicy;

impl table::Kind for AdmissionPolicy {
    type File = Admission;
    type Value = Admission;
    fn check(_: &str, v: Admission) -> Result<Admission> {
        Ok(v)
    }
    fn show(v: Admission) -> String {
        // Quoted: `check-config` prints a TOML file.
        match v {
            Admission::Token => "\"token\"",
            Admission::Manual => "\"manual\"",
        }
        .to_string()
    }
}

/// How the gateway authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A shared token (the default).
    Token,
    /// No authentication: only allowed on a loopback listen address.
    None,
}

impl FileConfig {
    /// Reads and parses a config file; an error is one line naming the
    /// file, the line and the key.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        FileConfig::parse(&text).map_err(|e| anyhow!("invalid config file {}{e}", path.display()))
    }

    /// Parses config text; the error reads `, line N: message`.
    pub fn parse(text: &str) -> std::result::Result<FileConfig, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let start = e.span().map(|span| span.start.min(text.len()));
            let line = start.map(|start| text[..start].matches('\n').count() + 1);
            // toml's message is one line ("unknown field `x`, expected one
            // of ..."); keep it, in words a person reads, and say where.
            let message = e
                .message()
                .trim()
                .replace('\n', " ")
                .replace("expected u64", "expected a whole number")
                .replace("expected usize", "expected a whole number");
            // Type errors do not name the key: take it from the line.
            let key = start
                .and_then(|start| {
                    text.get(..start)
                        .map(|s| s.rfind('\n').map_or(0, |i| i + 1))
                })
                .and_then(|line_start| text[line_start..].lines().next())
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && !message.contains(&format!("`{k}`")));
            match (line, key) {
                (Some(n), Some(key)) => format!(", line {n}, key {key}: {message}"),
                (Some(n), None) => format!(", line {n}: {message}"),
                _ => format!(": {message}"),
            }
        })
    }
}

/// Values given on the command line (all optional).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub display_name: Option<String>,
    pub gateway: bool,
    /// An operator command (`presence`, `forget`): the token is the
    /// operator credential, found on the gateway host in `operator.token`
    /// (see [`Settings::resolve`]).
    pub operator: bool,
    pub log_format: Option<LogFormat>,
    pub listen: Option<String>,
    pub auth: Option<AuthMode>,
    pub presence_ttl_secs: Option<u64>,
    pub presence_max_entries: Option<usize>,
    pub tls_fingerprint: Option<String>,
    pub allow_insecure_ws: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--public-name` (repeatable): replaces the file's `public_names`.
    pub public_names: Vec<String>,
}

/// The process environment, captured once (injected in tests).
#[derive(Debug, Default, Clone)]
pub struct Env {
    vars: HashMap<String, String>,
    pub is_root: bool,
    /// The config file read when none is named and it exists.
    pub default_config: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
            is_root: rustix::process::geteuid().is_root(),
            default_config: Some(PathBuf::from(DEFAULT_CONFIG_FILE)),
        }
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)], is_root: bool) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            is_root,
            default_config: None,
        }
    }

    /// A variable's value, treating empty as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Where the token comes from. Files are re-read on every connection
/// attempt, so fixing a token needs no restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file given by flag, environment or config file.
    File(PathBuf),
    /// An environment variable's value.
    Env { var: &'static str, token: Secret },
    /// `<state-dir>/gateway.token`, used when it exists.
    StateDirDefault(PathBuf),
    /// No token configured, a loopback gateway URL, and not the gateway
    /// itself: the local gateway's own token, the first of these files that
    /// exists (this state directory's, the user's default state
    /// directory's, then `/var/lib/clawnode`'s), so an agent or `clawnode
    /// presence` on the gateway's host needs no token path. Never used for
    /// a remote URL: a local token is not sent elsewhere.
    LocalGateway(Vec<PathBuf>),
}

impl TokenSource {
    /// Reads the token now. `Ok(None)` only for a state-dir default that
    /// does not exist (no token configured).
    pub fn read(&self) -> Result<Option<Secret>> {
        match self {
            TokenSource::Env { token, .. } => Ok(Some(token.clone())),
            TokenSource::File(path) => read_token_file(path).map(Some),
            TokenSource::StateDirDefault(path) => {
                if path.exists() {
                    read_token_file(path).map(Some)
                } else {
                    Ok(None)
                }
            }
            TokenSource::LocalGateway(candidates) => match candidates.iter().find(|p| p.exists()) {
                Some(path) => read_token_file(path).map(Some),
                None => Ok(None),
            },
        }
    }

    /// The file the token is read from now, if it comes from a file.
    pub fn file(&self) -> Option<&Path> {
        self.path()
    }

    fn path(&self) -> Option<&Path> {
        match self {
            TokenSource::File(p) | TokenSource::StateDirDefault(p) => Some(p),
            TokenSource::LocalGateway(candidates) => candidates
                .iter()
                .find(|p| p.exists())
                .or(candidates.first())
                .map(PathBuf::as_path),
            TokenSource::Env { .. } => None,
        }
    }

    /// A warning when the token file can be read by other users (group or
    /// world bits set): the token is the key to the whole gateway.
    pub fn permission_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.path()?;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "token file {} is accessible by other users (mode {mode:o}); run chmod 600 {}",
                path.display(),
                path.display()
            )
        })
    }

    /// A description for logs (never the token itself).
    pub fn describe(&self) -> String {
        match self {
            TokenSource::File(p) | TokenSource::StateDirDefault(p) => {
                format!("file {}", p.display())
            }
            TokenSource::LocalGateway(candidates) => match candidates.iter().find(|p| p.exists()) {
                Some(p) => format!("file {} (the local gateway's)", p.display()),
                None => format!(
                    "none found (looked for the local gateway's token in {})",
                    path_list(candidates)
                ),
            },
            TokenSource::Env { var, .. } => format!("environment variable {var}"),
        }
    }
}

/// Limits on connections still in their handshake (the gateway's
/// pre-auth admission control, `gateway::admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub total: usize,
    pub per_ip: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            total: 1024,
            per_ip: 64,
        }
    }
}

/// Paths for a message: `a, b, c`.
pub fn path_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a token file: surrounding whitespace is trimmed; empty is an error.
pub fn read_token_file(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path).with_context(|| {
        let hint = if path.exists() {
            String::new()
        } else {
            let (file, finder) = if path.file_name() == Some(OPERATOR_TOKEN_FILE.as_ref()) {
                (OPERATOR_TOKEN_FILE, "`clawnode presence` or `forget`")
            } else {
                (GATEWAY_TOKEN_FILE, "an agent")
            };
            format!(
                " (a gateway on this host keeps its token in /var/lib/clawnode/{file} when \
                 run as root or as the service, else in ~/.local/state/clawnode/{file}; \
                 {finder} for a local gateway finds it without --token-file)"
            )
        };
        format!("cannot read token file {}{hint}", path.display())
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    if token.contains(char::is_control) {
        bail!(
            "token file {} holds more than one line or control characters; it must hold only the token",
            path.display()
        );
    }
    Ok(Secret::new(token))
}

/// Gateway-only settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub auth: AuthMode,
    /// The operator credential (any role): `CLAWNODE_OPERATOR_TOKEN_FILE`,
    /// `[gateway] operator_token_file`, else `<state-dir>/operator.token`
    /// (generated on first start).
    pub operator_token: TokenSource,
    /// `Some` when the gateway serves TLS (`wss://`).
    pub tls: Option<ServerTlsFiles>,
    /// Names the gateway is reached by besides its defaults (`localhost`,
    /// this host's name, any IP address): a balancer's, a Service's.
    pub public_names: Vec<HostName>,
    /// Origins of pages elsewhere that may open the WebSocket.
    pub allowed_origins: Vec<Origin>,
    /// Under `admission = "manual"`, new devices connecting from these
    /// networks are approved on first use.
    pub admission_cidrs: Vec<cidr::Cidr>,
    /// The numbers and switches of the `[gateway]` table.
    pub tuning: GatewayTuning,
}

impl GatewaySettings {
    /// The settings of a gateway on `listen` with every default (tests,
    /// benches).
    pub fn new(listen: SocketAddr) -> Self {
        GatewaySettings {
            listen,
            auth: AuthMode::Token,
            operator_token: TokenSource::StateDirDefault(PathBuf::from(OPERATOR_TOKEN_FILE)),
            tls: None,
            public_names: Vec::new(),
            allowed_origins: Vec::new(),
            admission_cidrs: Vec::new(),
            tuning: GatewayTuning::default(),
        }
    }

    pub fn limits(&self) -> PresenceLimits {
        PresenceLimits {
            ttl_ms: self.tuning.presence_ttl.as_millis() as u64,
            max_entries: self.tuning.presence_max_entries,
        }
    }

    pub fn admission(&self) -> AdmissionLimits {
        AdmissionLimits {
            total: self.tuning.max_pending_handshakes,
            per_ip: self.tuning.max_pending_handshakes_per_ip,
        }
    }

    /// How a client on this host reaches the gateway at [`Self::local_url`]:
    /// with TLS, pinned to the fingerprint of the gateway's own certificate
    /// file (so a self-signed certificate works). Plaintext is allowed: the
    /// address is this host's own.
    pub fn local_client_tls(&self) -> Result<ClientTls> {
        Ok(ClientTls {
            fingerprint: match &self.tls {
                Some(files) => Some(Fingerprint::of_cert_file(&files.cert)?),
                None => None,
            },
            allow_insecure_ws: true,
        })
    }

    /// The URL a client on this host reaches the gateway at (a wildcard
    /// listen address is reached on loopback; `wss://` with TLS).
    pub fn local_url(&self) -> String {
        let ip = match self.listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}", SocketAddr::new(ip, self.listen.port()))
    }
}

/// Everything `run`, `presence` and `identity` need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub url: String,
    /// Pin and plaintext policy for connections to `url`.
    pub client_tls: ClientTls,
    pub state_dir: PathBuf,
    pub token: TokenSource,
    pub display_name: Option<String>,
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    /// The agent's numbers (the file's top-level table rows).
    pub agent: AgentTuning,
    /// `Some` when this process is the gateway.
    pub gateway: Option<GatewaySettings>,
}

impl Settings {
    /// Resolves flags > environment > config file > defaults.
    pub fn resolve(flags: &Flags, env: &Env) -> Result<Settings> {
        let config_path = flags
            .config
            .clone()
            .or_else(|| env.get("CLAWNODE_CONFIG").map(PathBuf::from))
            .or_else(|| env.default_config.clone().filter(|p| p.exists()));
        let mut file = match &config_path {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };

        let url = flags
            .url
            .clone()
            .or_else(|| env.get("CLAWNODE_URL").map(str::to_string))
            .or(file.url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let fingerprint = match (
            &flags.tls_fingerprint,
            env.get("CLAWNODE_TLS_FINGERPRINT"),
            &file.tls_fingerprint,
        ) {
            (Some(v), _, _) => Some(("--tls-fingerprint", v.as_str())),
            (None, Some(v), _) => Some(("CLAWNODE_TLS_FINGERPRINT", v)),
            (None, None, Some(v)) => Some(("tls_fingerprint", v.as_str())),
            (None, None, None) => None,
        };
        let fingerprint = match fingerprint {
            Some((source, v)) => Some(
                Fingerprint::parse(v)
                    .ok_or_else(|| anyhow!("invalid {source} {v:?}: {FINGERPRINT_FORMAT}"))?,
            ),
            None => None,
        };
        let allow_insecure_ws = flags.allow_insecure_ws
            || match env.get("CLAWNODE_ALLOW_INSECURE_WS") {
                Some("1" | "true" | "yes") => true,
                Some("0" | "false" | "no") => false,
                Some(v) => bail!("invalid CLAWNODE_ALLOW_INSECURE_WS {v:?}: expected 1 or 0"),
                None => file.allow_insecure_ws.unwrap_or(false),
            };
        let client_tls = ClientTls {
            fingerprint,
            allow_insecure_ws,
        };
        crate::tls::check_url(&url, &client_tls)?;

        let state_dir = flags
            .state_dir
            .clone()
            .or_else(|| env.get("CLAWNODE_STATE_DIR").map(PathBuf::from))
            .or(file.state_dir.clone())
            .map(Ok)
            .unwrap_or_else(|| default_state_dir(env))?;
        if state_dir.as_os_str().is_empty() {
            bail!("state_dir must not be empty: expected a directory path, e.g. /var/lib/clawnode");
        }

        let gateway_enabled = flags.gateway || file.gateway.enabled.unwrap_or(false);
        // The token this process presents (or, as the gateway, accepts from
        // nodes). An operator command looks for the operator's credential
        // instead: on the gateway host, `operator.token`.
        let own_file = if flags.operator {
            OPERATOR_TOKEN_FILE
        } else {
            GATEWAY_TOKEN_FILE
        };
        let local_candidates = || {
            let mut candidates = vec![state_dir.join(own_file)];
            let defaults = [
                default_state_dir(env).ok(),
                Some(PathBuf::from(SYSTEM_STATE_DIR)),
            ];
            for dir in defaults.into_iter().flatten() {
                let path = dir.join(own_file);
                if !candidates.contains(&path) {
                    candidates.push(path);
                }
            }
            candidates
        };
        let token = if let Some(p) = &flags.token_file {
            TokenSource::File(p.clone())
        } else if let Some(p) = env.get(OPERATOR_TOKEN_FILE_ENV).filter(|_| flags.operator) {
            TokenSource::File(PathBuf::from(p))
        } else if let Some(p) = env.get("CLAWNODE_TOKEN_FILE") {
            TokenSource::File(PathBuf::from(p))
        } else if let Some((var, t)) = ["CLAWNODE_TOKEN", "OPENCLAW_GATEWAY_TOKEN"]
            .into_iter()
            .find_map(|var| env.get(var).map(|t| (var, t)))
        {
            TokenSource::Env {
                var,
                token: Secret::new(t.trim()),
            }
        } else if flags.operator && gateway_enabled {
            // On the gateway host the file's `token_file` is the join token:
            // the operator's is the gateway's own operator credential.
            match &file.gateway.operator_token_file {
                Some(p) => TokenSource::File(p.clone()),
                None => TokenSource::LocalGateway(local_candidates()),
            }
        } else if let Some(p) = &file.token_file {
            TokenSource::File(p.clone())
        } else if !gateway_enabled && crate::loopback::is_loopback_url(&url) {
            TokenSource::LocalGateway(local_candidates())
        } else {
            TokenSource::StateDirDefault(state_dir.join(own_file))
        };

        let display_name = flags
            .display_name
            .clone()
            .or(file.display_name.clone())
            .map(|n| n.trim().to_string());
        match display_name.as_deref() {
            Some("") => bail!("display_name must not be empty: expected a name such as web-1"),
            Some(n) if n.chars().any(char::is_control) => {
                bail!("display_name must not contain control characters: expected a name such as web-1")
            }
            Some(n) if n.len() > 256 => {
                bail!("display_name is {} bytes: expected at most 256", n.len())
            }
            _ => {}
        }

        let gateway = if gateway_enabled {
            // The flags that set table rows, over the file.
            let mut g = std::mem::take(&mut file.gateway);
            g.presence_ttl_secs = flags.presence_ttl_secs.or(g.presence_ttl_secs);
            g.presence_max_entries = flags.presence_max_entries.or(g.presence_max_entries);
            let listen_text = flags
                .listen
                .clone()
                .or(g.listen.clone())
                .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
            let listen: SocketAddr = listen_text.parse().map_err(|_| {
                anyhow!("invalid listen address {listen_text:?}: expected IP:PORT, e.g. 127.0.0.1:18789")
            })?;
            let auth = flags.auth.or(g.auth).unwrap_or(AuthMode::Token);
            let operator_token = match (env.get(OPERATOR_TOKEN_FILE_ENV), &g.operator_token_file) {
                (Some(p), _) => TokenSource::File(PathBuf::from(p)),
                (None, Some(p)) => TokenSource::File(p.clone()),
                (None, None) => TokenSource::StateDirDefault(state_dir.join(OPERATOR_TOKEN_FILE)),
            };
            if auth == AuthMode::None && !listen.ip().is_loopback() {
                bail!(
                    "refusing to listen on {listen} without authentication: use a loopback address or token auth"
                );
            }
            let tuning = GatewayTuning::resolve(&g)?;
            let tls = match (
                flags.tls_cert.clone().or(g.tls_cert.clone()),
                flags.tls_key.clone().or(g.tls_key.clone()),
            ) {
                (Some(cert), Some(key)) => Some(ServerTlsFiles { cert, key }),
                (None, None) => None,
                (Some(_), None) => bail!("tls_cert is set but tls_key is not: the gateway needs both (--tls-key, [gateway] tls_key)"),
                (None, Some(_)) => bail!("tls_key is set but tls_cert is not: the gateway needs both (--tls-cert, [gateway] tls_cert)"),
            };
            let public_names = if flags.public_names.is_empty() {
                parse_public_names(
                    "public_names",
                    g.public_names.as_deref().unwrap_or_default(),
                )?
            } else {
                parse_public_names("--public-name", &flags.public_names)?
            };
            let allowed_origins =
                parse_allowed_origins(g.allowed_origins.as_deref().unwrap_or_default())?;
            let admission_cidrs = g
                .admission_cidrs
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|c| cidr::Cidr::parse(c).context("invalid admission_cidrs entry"))
                .collect::<Result<Vec<_>>>()?;
            if !admission_cidrs.is_empty() && tuning.admission != Admission::Manual {
                bail!("admission_cidrs needs admission = \"manual\": under \"token\" every new device is approved anyway");
            }
            if tuning.metrics_require_token && auth == AuthMode::None {
                bail!("metrics_require_token = true needs auth = \"token\": without auth there is no token to require");
            }
            Some(GatewaySettings {
                listen,
                auth,
                operator_token,
                tls,
                public_names,
                allowed_origins,
                admission_cidrs,
                tuning,
            })
        } else {
            None
        };

        let log_level = file.log_level.clone();
        if let Some(level) = &log_level {
            crate::logging::validate_filter(level).context("log_level")?;
        }
        let log_format = match (flags.log_format, env.get("CLAWNODE_LOG_FORMAT")) {
            (Some(f), _) => f,
            (None, Some(v)) => <LogFormat as clap::ValueEnum>::from_str(v, true).map_err(|_| {
                anyhow!("invalid CLAWNODE_LOG_FORMAT {v:?}: expected auto, text, json or journald")
            })?,
            (None, None) => file.log_format.unwrap_or_default(),
        };

        Ok(Settings {
            config_file: config_path,
            url,
            client_tls,
            state_dir,
            token,
            display_name,
            log_level,
            log_format,
            agent: AgentTuning::resolve(&file)?,
            gateway,
        })
    }
}

/// The public names of a setting (`public_names`, `--public-name`): host
/// names or IP addresses; an error names the entry and the accepted form.
fn parse_public_names(source: &str, names: &[String]) -> Result<Vec<HostName>> {
    names
        .iter()
        .map(|n| {
            HostName::parse_setting(n).ok_or_else(|| {
                anyhow!(
                    "invalid {source} entry {n:?}: expected a host name or IP address such as \
                     presence.example.com (no scheme, port or path; a page's origin goes in \
                     allowed_origins)"
                )
            })
        })
        .collect()
}

/// `allowed_origins`: `http(s)://host[:port]` each; `*` is refused.
fn parse_allowed_origins(origins: &[String]) -> Result<Vec<Origin>> {
    origins
        .iter()
        .map(|o| {
            if o.trim() == "*" {
                bail!(
                    "allowed_origins = [\"*\"] is not supported: it would let any web page open \
                     the gateway's WebSocket; list the origins, e.g. https://dash.example.com"
                );
            }
            Origin::parse(o).ok_or_else(|| {
                anyhow!(
                    "invalid allowed_origins entry {o:?}: expected an origin such as \
                     https://dash.example.com (http or https, a host, an optional port, no path)"
                )
            })
        })
        .collect()
}

/// `$STATE_DIRECTORY` (systemd), else `/var/lib/clawnode` as root, else
/// `$XDG_STATE_HOME/clawnode` or `~/.local/state/clawnode`.
pub fn default_state_dir(env: &Env) -> Result<PathBuf> {
    if let Some(dirs) = env.get("STATE_DIRECTORY") {
        // systemd passes a colon-separated list when several are configured.
        if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
            return Ok(PathBuf::from(first));
        }
    }
    if env.is_root {
        return Ok(PathBuf::from(SYSTEM_STATE_DIR));
    }
    if let Some(x) = env.get("XDG_STATE_HOME") {
        return Ok(Path::new(x).join("clawnode"));
    }
    if let Some(home) = env.get("HOME") {
        return Ok(Path::new(home).join(".local/state/clawnode"));
    }
    bail!("cannot choose a state directory: set --state-dir, CLAWNODE_STATE_DIR or HOME")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(flags: Flags, env: &[(&str, &str)]) -> Result<Settings> {
        Settings::resolve(&flags, &Env::from_pairs(env, false))
    }

    #[test]
    fn defaults() {
        let s = resolve(Flags::default(), &[("HOME", "/home/u")]).unwrap();
        assert_eq!(s.url, DEFAULT_URL);
        assert_eq!(s.state_dir, PathBuf::from("/home/u/.local/state/clawnode"));
        assert_eq!(
            s.token,
            TokenSource::LocalGateway(vec![
                PathBuf::from("/home/u/.local/state/clawnode/gateway.token"),
                PathBuf::from("/var/lib/clawnode/gateway.token"),
            ])
        );
        let remote = Flags {
            url: Some("ws://10.0.0.5:18789".into()),
            ..Flags::default()
        };
        assert_eq!(
            resolve(remote, &[("HOME", "/home/u")]).unwrap().token,
            TokenSource::StateDirDefault(PathBuf::from(
                "/home/u/.local/state/clawnode/gateway.token"
            ))
        );
        assert!(s.gateway.is_none());
        assert_eq!(s.agent.beacon_interval, Duration::from_secs(60));
    }

    #[test]
    fn state_dir_defaults_in_order() {
        let env = |pairs: &[(&str, &str)], root| {
            default_state_dir(&Env::from_pairs(pairs, root)).unwrap()
        };
        assert_eq!(
            env(
                &[("STATE_DIRECTORY", "/var/lib/x:/other"), ("HOME", "/h")],
                true
            ),
            PathBuf::from("/var/lib/x")
        );
        assert_eq!(
            env(&[("HOME", "/h")], true),
            PathBuf::from("/var/lib/clawnode")
        );
        assert_eq!(
            env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")], false),
            PathBuf::from("/s/clawnode")
        );
        assert!(default_state_dir(&Env::from_pairs(&[], false)).is_err());
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(&cfg, "url = \"ws://file.local:1\"\nstate_dir = \"/file\"\n").unwrap();
        let flags = Flags {
            config: Some(cfg.clone()),
            ..Flags::default()
        };
        let s = resolve(flags.clone(), &[]).unwrap();
        assert_eq!(
            (s.url.as_str(), s.state_dir.as_path()),
            ("ws://file.local:1", Path::new("/file"))
        );
        let s = resolve(
            flags.clone(),
            &[
                ("CLAWNODE_URL", "ws://env.local:1"),
                ("CLAWNODE_STATE_DIR", "/env"),
            ],
        )
        .unwrap();
        assert_eq!(
            (s.url.as_str(), s.state_dir.as_path()),
            ("ws://env.local:1", Path::new("/env"))
        );
        let s = resolve(
            Flags {
                url: Some("ws://flag.local:1".into()),
                state_dir: Some("/flag".into()),
                ..flags
            },
            &[("CLAWNODE_URL", "ws://env.local:1")],
        )
        .unwrap();
        assert_eq!(
            (s.url.as_str(), s.state_dir.as_path()),
            ("ws://flag.local:1", Path::new("/flag"))
        );
    }

    #[test]
    fn token_sources_in_order() {
        let base = [("HOME", "/h")];
        let flags = Flags {
            token_file: Some("/flag.token".into()),
            ..Flags::default()
        };
        let all = [
            ("HOME", "/h"),
            ("CLAWNODE_TOKEN_FILE", "/env.token"),
            ("CLAWNODE_TOKEN", "a"),
            ("OPENCLAW_GATEWAY_TOKEN", "b"),
        ];
        assert_eq!(
            resolve(flags, &all).unwrap().token,
            TokenSource::File("/flag.token".into())
        );
        assert_eq!(
            resolve(Flags::default(), &all).unwrap().token,
            TokenSource::File("/env.token".into())
        );
        let t = resolve(Flags::default(), &[all[0], all[2], all[3]])
            .unwrap()
            .token;
        assert_eq!(
            t,
            TokenSource::Env {
                var: "CLAWNODE_TOKEN",
                token: Secret::new("a")
            }
        );
        let t = resolve(Flags::default(), &[all[0], all[3]]).unwrap().token;
        assert_eq!(
            t,
            TokenSource::Env {
                var: "OPENCLAW_GATEWAY_TOKEN",
                token: Secret::new("b")
            }
        );
        assert!(matches!(
            resolve(Flags::default(), &base).unwrap().token,
            TokenSource::LocalGateway(_)
        ));
        let gateway = Flags {
            gateway: true,
            ..Flags::default()
        };
        assert_eq!(
            resolve(gateway, &base).unwrap().token,
            TokenSource::StateDirDefault("/h/.local/state/clawnode/gateway.token".into()),
            "a gateway never takes another gateway's token: it makes its own"
        );
    }

    #[test]
    fn an_agent_for_the_local_gateway_finds_its_token_without_a_path() {
        let own_dir = Flags {
            state_dir: Some("/tmp/a".into()),
            ..Flags::default()
        };
        let as_user = resolve(own_dir.clone(), &[("HOME", "/h")]).unwrap().token;
        assert_eq!(
            as_user,
            TokenSource::LocalGateway(vec![
                "/tmp/a/gateway.token".into(),
                "/h/.local/state/clawnode/gateway.token".into(),
                "/var/lib/clawnode/gateway.token".into(),
            ])
        );
        let as_root = Settings::resolve(&own_dir, &Env::from_pairs(&[("HOME", "/root")], true))
            .unwrap()
            .token;
        assert_eq!(
            as_root,
            TokenSource::LocalGateway(vec![
                "/tmp/a/gateway.token".into(),
                "/var/lib/clawnode/gateway.token".into(),
            ])
        );
        assert!(
            as_root.describe().contains("looked for the local gateway's token in /tmp/a/gateway.token, /var/lib/clawnode/gateway.token"),
            "{}",
            as_root.describe()
        );
        // The first that exists is read.
        let tmp = tempfile::tempdir().unwrap();
        let second = tmp.path().join("gw/gateway.token");
        std::fs::create_dir_all(second.parent().unwrap()).unwrap();
        std::fs::write(&second, "tok\n").unwrap();
        let found = TokenSource::LocalGateway(vec![tmp.path().join("none/gateway.token"), second]);
        assert_eq!(found.read().unwrap(), Some(Secret::new("tok")));
        assert!(found
            .describe()
            .contains("gw/gateway.token (the local gateway's)"));
    }

    /// Operator commands (`presence`, `forget`) look for the operator
    /// token where the agent looks for the join token; on the gateway host
    /// the config's `token_file` is the join token and is passed over.
    #[test]
    fn operator_commands_find_the_operator_token_and_never_the_join_token() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("gw.toml");
        std::fs::write(
            &cfg,
            "token_file = \"/etc/clawnode/join.token\"\nstate_dir = \"/srv/gw\"\n[gateway]\nenabled = true\n",
        )
        .unwrap();
        let operator = |flags: Flags, env: &[(&str, &str)], root: bool| {
            let flags = Flags {
                operator: true,
                ..flags
            };
            Settings::resolve(&flags, &Env::from_pairs(env, root)).unwrap()
        };
        // The gateway host, as root or as a user: its state dir's, then the
        // defaults' operator.token.
        let on_gw = Flags {
            config: Some(cfg.clone()),
            ..Flags::default()
        };
        assert_eq!(
            operator(on_gw.clone(), &[("HOME", "/root")], true).token,
            TokenSource::LocalGateway(vec![
                "/srv/gw/operator.token".into(),
                "/var/lib/clawnode/operator.token".into(),
            ])
        );
        assert_eq!(
            operator(on_gw.clone(), &[("HOME", "/h")], false).token,
            TokenSource::LocalGateway(vec![
                "/srv/gw/operator.token".into(),
                "/h/.local/state/clawnode/operator.token".into(),
                "/var/lib/clawnode/operator.token".into(),
            ])
        );
        // The gateway process itself keeps the join token and has its own
        // operator token in its state dir.
        let gw = resolve(on_gw.clone(), &[("HOME", "/h")]).unwrap();
        assert_eq!(
            gw.token,
            TokenSource::File("/etc/clawnode/join.token".into())
        );
        assert_eq!(
            gw.gateway.unwrap().operator_token,
            TokenSource::StateDirDefault("/srv/gw/operator.token".into())
        );
        // CLAWNODE_OPERATOR_TOKEN_FILE names it for both; a flag beats it.
        let env = [("HOME", "/h"), (OPERATOR_TOKEN_FILE_ENV, "/run/op.token")];
        assert_eq!(
            operator(on_gw.clone(), &env, false).token,
            TokenSource::File("/run/op.token".into())
        );
        let gw = resolve(on_gw.clone(), &env).unwrap();
        assert_eq!(
            gw.token,
            TokenSource::File("/etc/clawnode/join.token".into())
        );
        assert_eq!(
            gw.gateway.unwrap().operator_token,
            TokenSource::File("/run/op.token".into())
        );
        let flag = Flags {
            token_file: Some("/flag.token".into()),
            ..on_gw.clone()
        };
        assert_eq!(
            operator(flag, &env, false).token,
            TokenSource::File("/flag.token".into())
        );
        // `[gateway] operator_token_file`.
        std::fs::write(
            &cfg,
            "state_dir = \"/srv/gw\"\n[gateway]\nenabled = true\noperator_token_file = \"/etc/clawnode/operator.token\"\n",
        )
        .unwrap();
        assert_eq!(
            operator(on_gw.clone(), &[("HOME", "/h")], false).token,
            TokenSource::File("/etc/clawnode/operator.token".into())
        );
        assert_eq!(
            resolve(on_gw, &[("HOME", "/h")])
                .unwrap()
                .gateway
                .unwrap()
                .operator_token,
            TokenSource::File("/etc/clawnode/operator.token".into())
        );
        // Not the gateway host, a loopback URL: the local operator.token;
        // a remote URL: never a local file of another's.
        assert_eq!(
            operator(Flags::default(), &[("HOME", "/h")], false).token,
            TokenSource::LocalGateway(vec![
                "/h/.local/state/clawnode/operator.token".into(),
                "/var/lib/clawnode/operator.token".into(),
            ])
        );
        let remote = Flags {
            url: Some("ws://10.0.0.5:18789".into()),
            ..Flags::default()
        };
        assert_eq!(
            operator(remote, &[("HOME", "/h")], false).token,
            TokenSource::StateDirDefault("/h/.local/state/clawnode/operator.token".into())
        );
        // The agent is unchanged: the join token.
        assert_eq!(
            resolve(Flags::default(), &[("HOME", "/h")]).unwrap().token,
            TokenSource::LocalGateway(vec![
                "/h/.local/state/clawnode/gateway.token".into(),
                "/var/lib/clawnode/gateway.token".into(),
            ])
        );
    }

    #[test]
    fn a_missing_token_file_says_where_a_local_gateway_keeps_its_token() {
        let e = format!(
            "{:#}",
            read_token_file(Path::new("/nonexistent/gateway.token")).unwrap_err()
        );
        assert!(
            e.contains("cannot read token file /nonexistent/gateway.token")
                && e.contains("/var/lib/clawnode/gateway.token")
                && e.contains("~/.local/state/clawnode/gateway.token"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            read_token_file(Path::new("/nonexistent/operator.token")).unwrap_err()
        );
        assert!(
            e.contains("/var/lib/clawnode/operator.token") && e.contains("clawnode presence"),
            "{e}"
        );
    }

    #[test]
    fn unknown_config_keys_name_the_key_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(
            &cfg,
            "url = \"ws://a:1\"\n\n[gateway]\nlisten_addr = \"x\"\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            resolve(
                Flags {
                    config: Some(cfg),
                    ..Flags::default()
                },
                &[("HOME", "/h")]
            )
            .unwrap_err()
        );
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_values_are_one_clear_error() {
        let h = [("HOME", "/h")];
        let err = |flags: Flags| format!("{:#}", resolve(flags, &h).unwrap_err());
        assert!(err(Flags {
            url: Some("http://x".into()),
            ..Flags::default()
        })
        .contains("expected ws://"));
        assert!(err(Flags {
            url: Some("not a url".into()),
            ..Flags::default()
        })
        .contains("invalid gateway URL"));
        assert!(resolve(
            Flags {
                url: Some("wss://x".into()),
                ..Flags::default()
            },
            &h
        )
        .is_ok());
        assert!(err(Flags {
            url: Some("ws://gateway.example.com:1".into()),
            ..Flags::default()
        })
        .contains("refusing plaintext ws://"));
        assert!(err(Flags {
            url: Some("wss://x".into()),
            tls_fingerprint: Some("sha256:12".into()),
            ..Flags::default()
        })
        .contains("invalid --tls-fingerprint \"sha256:12\""));
        assert!(err(Flags {
            gateway: true,
            tls_cert: Some("/c.pem".into()),
            ..Flags::default()
        })
        .contains("tls_key is not"));
        let gw = |listen: &str, auth| Flags {
            gateway: true,
            listen: Some(listen.into()),
            auth,
            ..Flags::default()
        };
        assert!(err(gw("nope", None)).contains("invalid listen address"));
        assert!(err(gw("0.0.0.0:1", Some(AuthMode::None))).contains("refusing"));
        assert!(resolve(gw("127.0.0.1:1", Some(AuthMode::None)), &h).is_ok());
        assert!(err(Flags {
            gateway: true,
            presence_max_entries: Some(0),
            ..Flags::default()
        })
        .contains("at least 1"));
    }

    #[test]
    fn local_gateway_url_reaches_wildcards_on_loopback() {
        let url = |listen: &str| {
            resolve(
                Flags {
                    gateway: true,
                    listen: Some(listen.into()),
                    ..Flags::default()
                },
                &[("HOME", "/h")],
            )
            .unwrap()
            .gateway
            .unwrap()
            .local_url()
        };
        assert_eq!(url("0.0.0.0:18789"), "ws://127.0.0.1:18789");
        assert_eq!(url("[::]:7"), "ws://[::1]:7");
        assert_eq!(url("192.0.2.4:7"), "ws://192.0.2.4:7");
    }

    #[test]
    fn config_errors_are_one_line_naming_key_and_line() {
        let e =
            FileConfig::parse("url = \"ws://a:1\"\nbeacon_interval_secs = \"60\"\n").unwrap_err();
        assert!(e.starts_with(", line 2, key beacon_interval_secs: "), "{e}");
        assert!(e.ends_with("expected a whole number"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = FileConfig::parse("[gateway]\nenabled = yes\n").unwrap_err();
        assert!(e.starts_with(", line 2, key enabled: "), "{e}");
        let e = FileConfig::parse("log_format = \"xml\"\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("journald"), "{e}");
    }

    #[test]
    fn log_settings_resolve_and_bad_levels_name_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(&cfg, "log_level = \"debug\"\nlog_format = \"json\"\n").unwrap();
        let flags = Flags {
            config: Some(cfg.clone()),
            ..Flags::default()
        };
        let s = resolve(flags.clone(), &[("HOME", "/h")]).unwrap();
        assert_eq!(
            (s.log_level.as_deref(), s.log_format),
            (Some("debug"), LogFormat::Json)
        );
        let s = resolve(
            flags.clone(),
            &[("HOME", "/h"), ("CLAWNODE_LOG_FORMAT", "text")],
        )
        .unwrap();
        assert_eq!(s.log_format, LogFormat::Text);
        let s = resolve(
            Flags {
                log_format: Some(LogFormat::Journald),
                ..flags.clone()
            },
            &[("HOME", "/h"), ("CLAWNODE_LOG_FORMAT", "text")],
        )
        .unwrap();
        assert_eq!(s.log_format, LogFormat::Journald);
        let e = format!(
            "{:#}",
            resolve(
                flags.clone(),
                &[("HOME", "/h"), ("CLAWNODE_LOG_FORMAT", "xml")]
            )
            .unwrap_err()
        );
        assert!(e.contains("CLAWNODE_LOG_FORMAT"), "{e}");
        std::fs::write(&cfg, "log_level = \"loud\"\n").unwrap();
        let e = format!("{:#}", resolve(flags, &[("HOME", "/h")]).unwrap_err());
        assert!(e.starts_with("log_level: invalid log level"), "{e}");
    }

    #[test]
    fn the_default_config_file_is_read_only_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("clawnode.toml");
        let mut env = Env::from_pairs(&[("HOME", "/h")], false);
        env.default_config = Some(cfg.clone());
        let s = Settings::resolve(&Flags::default(), &env).unwrap();
        assert_eq!((s.config_file, s.url.as_str()), (None, DEFAULT_URL));
        std::fs::write(&cfg, "url = \"ws://gw.local:1\"\n").unwrap();
        let s = Settings::resolve(&Flags::default(), &env).unwrap();
        assert_eq!(
            (s.config_file, s.url.as_str()),
            (Some(cfg), "ws://gw.local:1")
        );
    }

    #[test]
    fn the_packaged_config_is_valid_and_all_defaults() {
        let text = include_str!("../packaging/clawnode.toml");
        let file = FileConfig::parse(text).unwrap();
        assert!(file.url.is_none() && file.gateway.enabled.is_none());
        // Uncommenting every key gives a valid file, with the documented defaults.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| {
                        r.split_once(" = ").is_some_and(|(key, _)| {
                            !key.is_empty()
                                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        })
                    })
                    .unwrap_or(l)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let file = FileConfig::parse(&uncommented).unwrap();
        assert_eq!(file.url.as_deref(), Some(DEFAULT_URL));
        assert_eq!(file.log_format, Some(LogFormat::Auto));
        assert_eq!(file.gateway.listen.as_deref(), Some(DEFAULT_LISTEN));
        // Every table row is documented, with its default.
        assert_eq!(AgentTuning::unset(&file), Vec::<&str>::new());
        assert_eq!(GatewayTuning::unset(&file.gateway), Vec::<&str>::new());
        assert_eq!(AgentTuning::resolve(&file).unwrap(), AgentTuning::default());
        assert_eq!(
            GatewayTuning::resolve(&file.gateway).unwrap(),
            GatewayTuning::default()
        );
        assert_eq!(file.gateway.enabled, Some(false));
        assert_eq!(file.allow_insecure_ws, Some(false));
        // The examples are valid values.
        assert!(file
            .tls_fingerprint
            .as_deref()
            .and_then(Fingerprint::parse)
            .is_some());
        assert!(file.gateway.tls_cert.is_some() && file.gateway.tls_key.is_some());
        let names = file.gateway.public_names.as_deref().unwrap_or_default();
        assert_eq!(parse_public_names("public_names", names).unwrap().len(), 2);
        let origins = file.gateway.allowed_origins.as_deref().unwrap_or_default();
        assert_eq!(parse_allowed_origins(origins).unwrap().len(), 1);
    }

    #[test]
    fn public_names_come_from_the_flag_or_the_file_and_origins_from_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(
            &cfg,
            "[gateway]\nenabled = true\npublic_names = [\"GW.example.com.\", \"fd00::1\"]\n\
             allowed_origins = [\"HTTPS://Dash.example.com:443/\"]\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(cfg),
            ..Flags::default()
        };
        let g = resolve(flags.clone(), &[("HOME", "/h")])
            .unwrap()
            .gateway
            .unwrap();
        let shown = |names: &[HostName]| names.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(shown(&g.public_names), ["gw.example.com", "[fd00::1]"]);
        assert_eq!(
            g.allowed_origins
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["https://dash.example.com"]
        );
        let flagged = Flags {
            public_names: vec!["lb.example.net".into()],
            ..flags
        };
        let g = resolve(flagged, &[("HOME", "/h")])
            .unwrap()
            .gateway
            .unwrap();
        assert_eq!(shown(&g.public_names), ["lb.example.net"]);
        assert!(GatewaySettings::new("127.0.0.1:1".parse().unwrap())
            .public_names
            .is_empty());
    }

    #[test]
    fn group_or_world_readable_token_files_are_reported() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("t");
        std::fs::write(&p, "abc\n").unwrap();
        let source = TokenSource::File(p.clone());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(source.permission_warning(), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = source.permission_warning().unwrap();
        assert!(w.contains("mode 644") && w.contains("chmod 600"), "{w}");
        assert!(!w.contains("abc"));
        let env = TokenSource::Env {
            var: "CLAWNODE_TOKEN",
            token: Secret::new("abc"),
        };
        assert_eq!(env.permission_warning(), None);
    }

    #[test]
    fn token_files_are_trimmed_and_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("t");
        std::fs::write(&p, "  abc \n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), Secret::new("abc"));
        std::fs::write(&p, "\n").unwrap();
        assert!(format!("{:#}", read_token_file(&p).unwrap_err()).contains("is empty"));
        std::fs::write(&p, "a\nb\n").unwrap();
        assert!(read_token_file(&p).is_err());
        assert!(format!(
            "{:#}",
            read_token_file(&tmp.path().join("missing")).unwrap_err()
        )
        .contains("cannot read token file"));
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "<redacted>");
    }
}
