//! The gateway: a WebSocket server that keeps the presence list.
//!
//! Shape (after tokio's mini-redis and bore): [`listener`] accepts and
//! spawns one [`handler`] task per connection; a handler owns its socket
//! (the sending half is a [`connection::Connection`]), lets [`auth`] decide
//! the handshake, and `select!`s over inbound frames, its bounded event
//! queue, presence changes and the shutdown signal. [`methods`] answers
//! requests through the operations of [`state::Shared`], the one closed
//! object that holds presence, connections and pins and announces every
//! change it makes; [`broadcast`] builds the events it fans out. [`http`]
//! serves the plain pages on the same port. docs/ARCHITECTURE.md follows one
//! node's presence through these files in order.

pub mod admission;
pub mod auth;
pub mod broadcast;
pub mod connection;
pub mod context;
pub mod handler;
pub mod http;
pub mod join_token_methods;
pub mod listener;
pub mod log_summary;
pub mod methods;
pub mod metrics;
pub mod outgoing;
pub mod pairing;
pub mod pairing_methods;
pub mod preauth;
pub mod registry;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;

use crate::config::{AuthMode, GatewaySettings, Secret};
use crate::origin::Site;
use crate::protocol::PresenceEntry;
use crate::service::ServiceNotifier;

/// The version we report in `hello-ok.server.version` and presence rows.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything the gateway needs to run: the resolved settings and what is
/// made at start (token, own row, registry location, TLS acceptor).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Listen address, auth and the `[gateway]` table's numbers.
    pub settings: GatewaySettings,
    /// The fleet's join token, granting role `node` only; `None` when auth
    /// is disabled (loopback only; checked by config).
    pub token: Option<Secret>,
    /// The operator credential (`<state-dir>/operator.token`): any role.
    /// `None` with a join token: no operator connects by token.
    pub operator_token: Option<Secret>,
    /// Where operators find it, named in the join token's refusal of role
    /// operator.
    pub operator_token_hint: String,
    /// Largest frame before `connect` succeeds.
    pub max_preauth_payload: usize,
    /// Largest frame afterwards (advertised as `policy.maxPayload`;
    /// `[gateway] max_payload_bytes`).
    pub max_payload: usize,
    /// Per-connection outbound queue, in frames.
    pub send_queue: usize,
    /// The state directory holding the device registry
    /// (`registry.sqlite`; `None`: in memory only).
    pub registry_dir: Option<std::path::PathBuf>,
    /// The gateway's own presence row (rule 1).
    pub self_entry: PresenceEntry,
    /// Serve `wss://`: the TLS handshake runs inside `handshake_timeout`.
    pub tls: Option<crate::tls::ServerTls>,
    /// The `Host` names and WebSocket `Origin`s it answers to (its port
    /// is the bound one once [`Gateway::new`] has the listener).
    pub site: Site,
}

impl GatewayConfig {
    /// A gateway on `listen` with the default settings (tests, benches).
    pub fn new(listen: SocketAddr, token: Option<Secret>, self_entry: PresenceEntry) -> Self {
        GatewayConfig::from_settings(GatewaySettings::new(listen), token, self_entry)
    }

    /// A gateway with resolved settings; the registry in memory, no TLS.
    pub fn from_settings(
        settings: GatewaySettings,
        token: Option<Secret>,
        self_entry: PresenceEntry,
    ) -> Self {
        let site = Site::for_this_host(
            settings.listen,
            settings.tls.is_some(),
            &settings.public_names,
            &settings.allowed_origins,
        );
        GatewayConfig {
            max_payload: settings.tuning.max_payload,
            site,
            settings,
            token,
            operator_token: None,
            operator_token_hint: format!("<state-dir>/{}", crate::config::OPERATOR_TOKEN_FILE),
            max_preauth_payload: 64 * 1024,
            send_queue: 256,
            registry_dir: None,
            self_entry,
            tls: None,
        }
    }
}

/// A bound, not yet serving gateway.
pub struct Gateway {
    listener: TcpListener,
    state: Arc<state::Shared>,
    notifier: ServiceNotifier,
}

/// Binds a listen address. A port in use is a clear error.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))
}

impl Gateway {
    /// Binds `config.settings.listen`.
    pub async fn bind(config: GatewayConfig) -> Result<Gateway> {
        Gateway::new(bind(config.settings.listen).await?, config)
    }

    /// A gateway on an already bound listener (bind first, so a port in
    /// use fails before anything else happens). Opens the device registry
    /// (importing an earlier version's `pins.json` once).
    pub fn new(listener: TcpListener, mut config: GatewayConfig) -> Result<Gateway> {
        config.site.listen = listener.local_addr()?;
        let registry: Arc<dyn registry::DeviceRegistry> = match &config.registry_dir {
            Some(dir) => Arc::new(registry::SqliteRegistry::open(dir)?),
            None => Arc::new(registry::MemoryRegistry::new()),
        };
        Ok(Gateway {
            listener,
            state: Arc::new(state::Shared::new(config, registry)),
            notifier: ServiceNotifier::disabled(),
        })
    }

    /// Reports status and watchdog pings to systemd while serving.
    pub fn with_notifier(mut self, notifier: ServiceNotifier) -> Gateway {
        self.notifier = notifier;
        self
    }

    /// Pins the gateway's own instance id to its own device key, so no
    /// client can claim the gateway's row.
    pub async fn pin_self(&self, identity: &crate::identity::DeviceIdentity) -> Result<()> {
        let key = crate::presence::PresenceKey::for_connection(
            Some(identity.instance_id()),
            Some(identity.device_id()),
            "",
        );
        let device = registry::Device {
            id: identity.device_id().to_string(),
            public_key: identity.public_key().to_string(),
            role: None,
            address: None,
            display_name: None,
            join_token: None,
        };
        if let registry::ClaimCheck::Conflict(pin) = self
            .state
            .claim(&key, device, None, crate::clock::now_ms())
            .await?
        {
            tracing::warn!(
                instance_id = identity.instance_id(),
                pinned_to = %pin.device_id,
                "the gateway's own instance id is pinned to another device key; run \
                 `clawnode forget <instance id>` so that no client can claim the gateway's row"
            );
        }
        Ok(())
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` resolves, then tells every client (`shutdown`
    /// event, close 1012) and waits briefly for handlers to finish.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        listener::serve(self.listener, self.state, self.notifier, shutdown).await
    }
}

/// How auth is configured, for the start-up log line.
pub fn describe_auth(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::Token => "token",
        AuthMode::None => "none (loopback only)",
    }
}
