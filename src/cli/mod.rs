//! The command line: `run`, `presence`, `identity`. Parsing lives here so it
//! is testable; `main.rs` only calls [`main`].

pub mod check_config;
pub mod devices;
pub mod forget;
pub mod identity;
pub mod join_token;
pub mod presence;
pub mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{AuthMode, Flags};
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "clawnode",
    version,
    about = "Fleet-presence daemon: OpenClaw-compatible node agent and presence gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: a node agent, or with --gateway the gateway.
    Run(RunArgs),
    /// Show the gateway's presence list.
    Presence(PresenceArgs),
    /// Show (creating if missing) this host's identity.
    Identity(IdentityArgs),
    /// Validate the configuration and print the effective settings that
    /// `run` with the same options would use (the token is never shown).
    CheckConfig(RunArgs),
    /// On the gateway host: forget which device key owns an instance id, so
    /// a re-imaged host (new key, same instance id) is accepted again.
    Forget(ForgetArgs),
    /// On the gateway host: list devices and pairing requests; approve,
    /// reject, revoke or remove a device.
    Devices(devices::DevicesArgs),
    /// On the gateway host: create, list or revoke join tokens, which let
    /// new hosts enrol (role node) for a while and a number of times.
    JoinToken(join_token::JoinTokenArgs),
}

/// How a client reaches the gateway over TLS (agent and `presence`).
#[derive(Debug, Args, Clone, Default)]
pub struct ClientTlsArgs {
    /// Pin the gateway's TLS certificate: only a certificate with this
    /// SHA-256 fingerprint is accepted (no CA or host name check).
    #[arg(long, value_name = "sha256:HEX")]
    pub tls_fingerprint: Option<String>,
    /// Allow plaintext ws:// to a host that is not loopback or private.
    #[arg(long)]
    pub allow_insecure_ws: bool,
}

/// Settings and the gateway an operator command (`presence`, `forget`)
/// talks to: on the gateway host (config `[gateway] enabled = true`) the
/// local gateway, pinning its own certificate when it serves TLS, unless a
/// URL was given; elsewhere the configured URL. `settings.token` is the
/// operator's credential: `--token-file`, `CLAWNODE_OPERATOR_TOKEN_FILE`,
/// else on the gateway host its `operator.token` (the join token in
/// `gateway.token` grants role node only).
pub fn operator_target(
    common: &CommonArgs,
    url: &Option<String>,
    token_file: &Option<PathBuf>,
    client_tls: &ClientTlsArgs,
) -> anyhow::Result<(crate::config::Settings, String, crate::tls::ClientTls)> {
    let settings = crate::config::Settings::resolve(
        &Flags {
            config: common.config.clone(),
            state_dir: common.state_dir.clone(),
            url: url.clone(),
            token_file: token_file.clone(),
            tls_fingerprint: client_tls.tls_fingerprint.clone(),
            allow_insecure_ws: client_tls.allow_insecure_ws,
            operator: true,
            ..Flags::default()
        },
        &crate::config::Env::from_process(),
    )?;
    let (url, tls) = match &settings.gateway {
        Some(gw) if url.is_none() && std::env::var_os("CLAWNODE_URL").is_none() => {
            (gw.local_url(), gw.local_client_tls()?)
        }
        _ => (settings.url.clone(), settings.client_tls.clone()),
    };
    Ok((settings, url, tls))
}

/// Options shared by every command that reads the configuration.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// Config file (TOML) [default: /etc/clawnode/clawnode.toml when it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// State directory (identity, generated gateway token).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run as the gateway instead of an agent.
    #[arg(long)]
    pub gateway: bool,
    /// Gateway listen address.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Gateway authentication.
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Gateway URL the agent connects to.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    /// Gateway TLS certificate chain (PEM); serve wss:// with --tls-key.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// Gateway TLS private key (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// A name clients reach the gateway by (a balancer's, a Service's),
    /// besides localhost, this host's name and its IP addresses; repeat
    /// for several (replaces [gateway] public_names).
    #[arg(long = "public-name", value_name = "NAME")]
    pub public_names: Vec<String>,
    /// File holding the gateway token (never pass a token on the command line).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Name shown for this host (default: the system host name).
    #[arg(long, value_name = "NAME")]
    pub display_name: Option<String>,
    /// Presence TTL in seconds (gateway).
    #[arg(long, value_name = "N")]
    pub presence_ttl_secs: Option<u64>,
    /// Maximum presence entries without a live connection (gateway; a
    /// connected host is never evicted).
    #[arg(long, value_name = "N")]
    pub presence_max_entries: Option<usize>,
    /// Log sink: the journal under systemd, else text on stderr (auto).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Gateway URL.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
    /// File holding the operator token [default on the gateway host: its
    /// operator.token].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Print the raw system-presence payload as JSON (with --watch: one
    /// line per change).
    #[arg(long)]
    pub json: bool,
    /// Keep the table live from the gateway's presence events (Ctrl-C quits).
    #[arg(long)]
    pub watch: bool,
    /// Full instance ids, nothing cut to fit the terminal.
    #[arg(long)]
    pub wide: bool,
    /// Only rows whose field matches, ignoring case; `*` matches any text.
    /// Fields: host, ip, mode, version, platform, family, model, instance,
    /// reason, device, label (the operator's, `devices rename`). Repeat to
    /// require several.
    #[arg(long, value_name = "FIELD=VALUE")]
    pub filter: Vec<String>,
    /// Only rows with these statuses (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STATUS")]
    pub status: Vec<StatusArg>,
}

/// `--status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusArg {
    Active,
    Idle,
    Stale,
    /// The client disconnected; the row stays until the TTL.
    Left,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The instance id to forget (as shown by `clawnode presence --wide`).
    #[arg(value_name = "INSTANCE_ID")]
    pub instance_id: String,
    /// Gateway URL [default: the local gateway].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// File holding the operator token [default on the gateway host: its
    /// operator.token].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    pub fn flags(&self) -> Flags {
        Flags {
            config: self.common.config.clone(),
            url: self.url.clone(),
            token_file: self.token_file.clone(),
            state_dir: self.common.state_dir.clone(),
            display_name: self.display_name.clone(),
            gateway: self.gateway,
            operator: false,
            log_format: self.log_format,
            listen: self.listen.clone(),
            auth: self.auth,
            presence_ttl_secs: self.presence_ttl_secs,
            presence_max_entries: self.presence_max_entries,
            tls_fingerprint: self.client_tls.tls_fingerprint.clone(),
            allow_insecure_ws: self.client_tls.allow_insecure_ws,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            public_names: self.public_names.clone(),
        }
    }
}

/// Parses arguments; usage errors become one line on stderr and exit 2.
pub fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Err(ExitCode::from(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    },
                ));
            }
            eprintln!("clawnode: {}", usage_error(&e));
            Err(ExitCode::from(2))
        }
    }
}

/// A command-line error as one line a newcomer can act on: a token given as
/// an argument says why that is refused and what to use; a bad value lists
/// the valid ones.
fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    let invalid = context(ContextKind::InvalidArg).unwrap_or_default();
    if e.kind() == ErrorKind::UnknownArgument
        && (invalid == "--token" || invalid.starts_with("--token="))
    {
        return "--token is not accepted: a token on the command line is visible to every \
                user in `ps` and stays in shell history. Put it in a file readable only by \
                you and pass --token-file PATH (or token_file in the config), or set \
                CLAWNODE_TOKEN in the environment"
            .to_string();
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match (e.kind(), context(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(valid)) if !first.contains(&valid) => {
            format!("{first}; valid values: {valid} (see `clawnode --help`)")
        }
        _ => format!("{first} (see `clawnode --help`)"),
    }
}

/// Runs a parsed command; errors are one line on stderr and exit 1.
pub async fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Presence(args) => presence::run(args).await,
        Command::Identity(args) => identity::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Forget(args) => forget::run(args).await,
        Command::Devices(args) => devices::run(args).await,
        Command::JoinToken(args) => join_token::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain may quote a gateway's message or close reason.
            eprintln!(
                "clawnode: error: {}",
                crate::safe_text::escape(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

/// A table of text columns, each cell escaped (`safe_text::escape`: values
/// come from a gateway), padded to its column's width, two spaces apart,
/// the header row first; `empty` on a line of its own when there is no row
/// but the header. What `clawnode devices list` and `join-token list` print.
pub(crate) fn text_table<R: AsRef<[String]>>(rows: &[R], empty: &str) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.as_ref()
                .iter()
                .map(|c| crate::safe_text::escape(c).into_owned())
                .collect()
        })
        .collect();
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str(empty);
        out.push('\n');
    }
    out
}
