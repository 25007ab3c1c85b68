//! `clawnode`: a fleet-presence daemon for headless Linux hosts.
//!
//! One binary, two roles: by default a node **agent** that joins an
//! OpenClaw-compatible gateway with `role: node`; with `--gateway`, the
//! **gateway** itself (presence store + WebSocket server). Both speak the
//! types in [`protocol`], the single definition of every frame.

#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod host;
pub mod identity;
pub mod logging;
pub mod loopback;
pub mod presence;
pub mod protocol;
pub mod safe_text;
pub mod service;
pub mod shutdown;
pub mod state_file;
pub mod tls;

/// This build's version, reported to gateways and in presence rows.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
