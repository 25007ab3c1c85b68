//! `clawnode`: a fleet-presence daemon for headless Linux hosts.
//!
//! One binary, two roles: by default a node **agent** that joins an
//! OpenClaw-compatible gateway with `role: node`; with `--gateway`, the
//! **gateway** itself (presence store + WebSocket server). Both speak the
//! types in [`protocol`], the single definition of every frame.

pub mod protocol;
