//! `clawnode run`: resolve settings, load the identity, then run the agent
//! or the gateway until SIGTERM/SIGINT.

use anyhow::{Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tracing::{info, warn};

use super::RunArgs;
use crate::agent::{self, AgentConfig};
use crate::config::{AuthMode, Env, GatewaySettings, Secret, Settings, TokenSource};
use crate::gateway::{self, Gateway, GatewayConfig};
use crate::host::HostFacts;
use crate::identity::DeviceIdentity;
use crate::logging::LogOptions;
use crate::protocol::{mode, PresenceEntry};
use crate::service::ServiceNotifier;
use crate::shutdown::{self, Shutdown};
use crate::state_file;
use crate::tls::ServerTls;

pub async fn run(args: RunArgs) -> Result<()> {
    let settings = Settings::resolve(&args.flags(), &Env::from_process())?;
    // Fail fast on bad input before logging anything, so it is one line:
    // a bad TLS certificate or key, a port in use, an unreadable token file.
    let gateway_parts = match &settings.gateway {
        Some(gw) => {
            let tls = gw.tls.as_ref().map(ServerTls::load).transpose()?;
            let listener = gateway::bind(gw.listen).await?;
            let (tokens, token_note) = gateway_tokens(&settings, gw)?;
            Some(GatewayParts {
                listener,
                tokens,
                token_note,
                tls,
            })
        }
        None => {
            // No join token is fine once the gateway issued a device token
            // (a fleet that stopped distributing it after enrolment).
            if let Err(e) = settings.token.read() {
                let stored = crate::agent::device_token::DeviceTokenStore::new(&settings.state_dir);
                if !stored.has_token_for(&settings.url) {
                    return Err(e);
                }
            }
            None
        }
    };
    let (identity, report) = DeviceIdentity::load_or_create(&settings.state_dir)?;
    // Every journal entry carries who we are and where we report.
    let mut journal_fields = vec![("INSTANCE_ID", identity.instance_id().to_string())];
    match &settings.gateway {
        Some(gw) => journal_fields.push(("GATEWAY_LISTEN", gw.listen.to_string())),
        None => journal_fields.push(("GATEWAY_URL", settings.url.clone())),
    }
    let log_warning = crate::logging::init(LogOptions {
        filter: settings.log_level.as_deref(),
        format: settings.log_format,
        journal_fields,
    })?;
    if let Some(w) = log_warning {
        warn!("{w}");
    }
    if let Some(path) = &settings.config_file {
        info!(config = %path.display(), "configuration read");
    }
    if report.created_instance_id || report.created_device_key {
        info!(state_dir = %settings.state_dir.display(), instance_id = identity.instance_id(), "created a new identity");
    }
    if let Some(w) = settings.token.permission_warning() {
        warn!("{w}");
    }
    if let Some(w) = settings
        .gateway
        .as_ref()
        .and_then(|gw| gw.operator_token.permission_warning())
    {
        warn!("{w}");
    }
    if let Some(mode) = report.shared_dir_mode {
        warn!(state_dir = %settings.state_dir.display(), "state directory is accessible by other users (mode {mode:o}); consider chmod 700");
    }
    let (trigger, stop) = Shutdown::new();
    shutdown::on_signals(trigger).context("cannot install signal handlers")?;
    let notifier = ServiceNotifier::from_env();
    if let Some(period) = notifier.watchdog_period() {
        info!(
            ping_every_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    // STOPPING=1 as soon as shutdown starts (draining may take a moment),
    // and again (a no-op if already sent) when the run ends, in case the
    // runtime winds down before that task is scheduled.
    {
        let (notifier, mut stop) = (notifier.clone(), stop.clone());
        tokio::spawn(async move {
            stop.wait().await;
            notifier.stopping();
        });
    }
    let result = run_role(&settings, gateway_parts, identity, notifier.clone(), stop).await;
    notifier.stopping();
    result
}

/// What a gateway host loads before logging starts (so a bad file or a
/// port in use is one line): the bound listener, the token with a note on
/// where it came from, and the TLS identity.
struct GatewayParts {
    listener: tokio::net::TcpListener,
    tokens: Tokens,
    token_note: String,
    tls: Option<ServerTls>,
}

async fn run_role(
    settings: &Settings,
    gateway_parts: Option<GatewayParts>,
    identity: DeviceIdentity,
    notifier: ServiceNotifier,
    stop: Shutdown,
) -> Result<()> {
    match (&settings.gateway, gateway_parts) {
        (Some(gw), Some(parts)) => {
            info!("{}", parts.token_note);
            run_gateway(settings, gw, parts, &identity, notifier, stop).await
        }
        _ => {
            let config = AgentConfig {
                url: settings.url.clone(),
                tls: settings.client_tls.clone(),
                token: settings.token.clone(),
                display_name: settings.display_name.clone(),
                tuning: settings.agent,
                disk_path: "/".into(),
                state_dir: settings.state_dir.clone(),
            };
            agent::run(config, identity, notifier, stop).await
        }
    }
}

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit is 1024, far below what a gateway holding a fleet needs; the hard
/// limit is the administrator's real ceiling). Returns the limit now in force.
/// An unlimited value reads as `u64::MAX` (`RLIM_INFINITY`).
fn raise_open_file_limit() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // `None` is RLIM_INFINITY, the largest limit.
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    let maximum = lim.maximum.unwrap_or(u64::MAX);
    if current < maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Ok(maximum);
        }
    }
    Ok(current)
}

/// The gateway's tokens: the join token (role node) and the operator
/// token (any role), each the configured one, else its file in the state
/// directory (`gateway.token`, `operator.token`), generated on first start.
/// Returns them with lines for the log that name where they came from (a
/// file's path, never a token).
fn gateway_tokens(settings: &Settings, gw: &GatewaySettings) -> Result<(Tokens, String)> {
    if gw.auth == AuthMode::None {
        return Ok((
            Tokens::default(),
            "gateway authentication is disabled (loopback only)".into(),
        ));
    }
    let (join, join_note) = load_or_generate(
        settings,
        &settings.token,
        "gateway token",
        "give this file to agents with --token-file (it grants role node only)",
    )?;
    let (operator, operator_note) = load_or_generate(
        settings,
        &gw.operator_token,
        "operator token",
        "operators use it (clawnode presence/forget on this host read it automatically)",
    )?;
    if crate::gateway::auth::tokens_match(join.expose(), operator.expose()) {
        anyhow::bail!(
            "the operator token ({}) is the gateway token ({}): the join token every host holds \
             would be an operator key; give the operator token a value of its own",
            gw.operator_token.describe(),
            settings.token.describe()
        );
    }
    let hint = match &gw.operator_token {
        TokenSource::Env { var, .. } => format!("the operator token (${var})"),
        source => source
            .file()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the operator token".into()),
    };
    Ok((
        Tokens {
            join: Some(join),
            operator: Some(operator),
            operator_hint: hint,
        },
        format!("{join_note}; {operator_note}"),
    ))
}

/// The gateway's credentials (`None`: auth disabled).
#[derive(Default)]
struct Tokens {
    join: Option<Secret>,
    operator: Option<Secret>,
    /// Where operators find theirs, for the join token's refusal.
    operator_hint: String,
}

/// A token from `source`, or when it is a state-dir default that does not
/// exist yet, generated there (0600, written atomically; whoever wins a
/// creation race, the file then holds the token to use).
fn load_or_generate(
    settings: &Settings,
    source: &TokenSource,
    what: &str,
    use_note: &str,
) -> Result<(Secret, String)> {
    let path = match (source, source.read()?) {
        (source, Some(token)) => return Ok((token, format!("{what} from {}", source.describe()))),
        (TokenSource::StateDirDefault(path), None) => path,
        (source, None) => anyhow::bail!("no {what} in {}", source.describe()),
    };
    // The state directory may not exist yet on a first start.
    state_file::ensure_private_dir(&settings.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            settings.state_dir.display()
        )
    })?;
    let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let created = state_file::create_atomic(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {what} {}", path.display()))?;
    let note = if created {
        format!("generated the {what} in {}; {use_note}", path.display())
    } else {
        format!("{what} from file {}", path.display())
    };
    Ok((crate::config::read_token_file(path)?, note))
}

/// The gateway's own presence row (rule 1).
pub fn self_entry(
    settings: &Settings,
    identity: &DeviceIdentity,
    facts: &HostFacts,
) -> PresenceEntry {
    let host = settings
        .display_name
        .clone()
        .unwrap_or_else(|| facts.hostname.clone());
    let ip = facts.ip.map(|ip| ip.to_string());
    let text = format!(
        "Gateway: {host}{} · app {} · mode gateway · reason self",
        ip.as_ref().map(|ip| format!(" ({ip})")).unwrap_or_default(),
        crate::VERSION
    );
    PresenceEntry {
        instance_id: Some(identity.instance_id().to_string()),
        host: Some(host),
        ip,
        version: Some(crate::VERSION.to_string()),
        platform: Some(facts.platform.clone()),
        device_family: Some(facts.device_family.clone()),
        model_identifier: Some(facts.model_identifier.clone()),
        mode: Some(mode::GATEWAY.to_string()),
        reason: Some("self".to_string()),
        device_id: Some(identity.device_id().to_string()),
        text: Some(text),
        ts: crate::clock::now_ms(),
        ..PresenceEntry::default()
    }
}

async fn run_gateway(
    settings: &Settings,
    gw: &GatewaySettings,
    parts: GatewayParts,
    identity: &DeviceIdentity,
    notifier: ServiceNotifier,
    mut stop: Shutdown,
) -> Result<()> {
    let facts = HostFacts::collect();
    match raise_open_file_limit() {
        Ok(limit) if (limit as usize) < gw.tuning.max_connections + 64 => warn!(
            open_file_limit = limit,
            max_connections = gw.tuning.max_connections,
            "the open-file limit is below max_connections; connections past it will fail (raise LimitNOFILE)"
        ),
        Ok(limit) => info!(open_file_limit = limit, "open-file limit"),
        Err(e) => warn!(error = %e, "cannot read the open-file limit"),
    }
    let GatewayParts {
        listener,
        tokens,
        tls,
        ..
    } = parts;
    let tls_note = match &tls {
        Some(t) => format!("wss (certificate {})", t.fingerprint),
        None => "none (ws://)".to_string(),
    };
    let config = GatewayConfig {
        registry_dir: Some(settings.state_dir.clone()),
        tls,
        operator_token: tokens.operator,
        operator_token_hint: tokens.operator_hint,
        ..GatewayConfig::from_settings(
            gw.clone(),
            tokens.join,
            self_entry(settings, identity, &facts),
        )
    };
    let gateway = Gateway::new(listener, config)?.with_notifier(notifier.clone());
    gateway.pin_self(identity).await?;
    info!(
        listen = %gateway.local_addr()?,
        auth = gateway::describe_auth(gw.auth),
        tls = %tls_note,
        instance_id = identity.instance_id(),
        ttl_secs = gw.tuning.presence_ttl.as_secs(),
        max_entries = gw.tuning.presence_max_entries,
        "gateway listening"
    );
    let page = browse_url(gateway.local_addr()?, tls_note.starts_with("wss"));
    info!(
        instances_page = %page,
        metrics = %format!("{page}metrics"),
        health = %format!("{page}healthz"),
        "open the Instances page in a browser (with the operator token); Prometheus scrapes /metrics"
    );
    notifier.ready(&format!("gateway listening on {}", gateway.local_addr()?));
    gateway.serve(async move { stop.wait().await }).await?;
    info!("gateway stopped");
    Ok(())
}

/// The address a person opens for the gateway's pages: `http(s)://ADDR/`,
/// with this host's name for a wildcard listen address.
fn browse_url(addr: std::net::SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = if addr.ip().is_unspecified() {
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "THIS-HOST".to_string())
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("{scheme}://{host}:{}/", addr.port())
}
