//! Interoperability with the real OpenClaw 2026.9.6: its gateway, its CLI and
//! its node host, installed by `scripts/openclaw-peers.sh`.
//!
//! Run with `cargo test --features interop --test interop`.

#[path = "../common/mod.rs"]
mod common;

mod agent_to_openclaw;
mod devices_cli;
mod join_tokens;
mod openclaw_to_gateway;
mod schema;
