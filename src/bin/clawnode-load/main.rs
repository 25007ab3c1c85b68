//! `clawnode-load`: drives many simulated nodes against a gateway (ours or
//! OpenClaw's) and prints one JSON line of results. Each node has its own
//! Ed25519 key and instanceId and speaks exactly what the real agent speaks
//! (the agent's own `signed_node_connect`, `node_beacon` and host stats).
//!
//! Modes:
//! - `hold`: connect `--nodes` (at most `--concurrency` handshakes in
//!   flight), hold them for `--duration` with beacons and host stats, while
//!   one operator calls `system-presence` at `--presence-rate`.
//! - `handshakes`: `--concurrency` workers connect, get hello-ok and close,
//!   for `--duration`: the sustained signed-handshake rate.
//! - `storm`: connect `--nodes`, then wait for them to be cut off (the caller
//!   restarts the gateway); each reconnects with the agent's backoff; reports
//!   how long until all are back.
//!
//! The token comes from `--token-file` or `CLAWNODE_TOKEN`, never argv.
//! See scripts/load.sh and docs/PERFORMANCE.md.

#![forbid(unsafe_code)]

mod node;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use clawnode::config::Secret;
use clawnode::host::HostFacts;
use clawnode::identity::DeviceIdentity;
use tokio::sync::{watch, Semaphore};

use node::{Node, NodeRun, Shared};
use report::Stats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Hold,
    Handshakes,
    Storm,
}

#[derive(Debug, Parser)]
#[command(
    name = "clawnode-load",
    version,
    about = "Load generator for a presence gateway"
)]
struct Args {
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:18789")]
    url: String,
    #[arg(long, value_enum, default_value = "hold")]
    mode: Mode,
    /// Simulated nodes (hold, storm) or distinct identities (handshakes --no-fresh).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to hold (hold) or to run (handshakes).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds between a node's beacons (0: none).
    #[arg(long, default_value_t = 60.0)]
    beacon_interval: f64,
    /// Seconds between a node's host stats (0: none).
    #[arg(long, default_value_t = 60.0)]
    stats_interval: f64,
    /// `system-presence` calls per second by one operator (0: none).
    #[arg(long, default_value_t = 10.0)]
    presence_rate: f64,
    /// handshakes: reuse `--nodes` identities instead of a new one per handshake.
    #[arg(long)]
    no_fresh: bool,
    /// storm: give up waiting for all nodes after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    storm_timeout: f64,
    /// A file holding the gateway token (else $CLAWNODE_TOKEN): the join
    /// token the nodes present.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A file holding the operator token for the `system-presence` caller
    /// (our gateway's `operator.token`: its join token admits nodes only);
    /// default: the gateway token (one token, as an OpenClaw gateway has).
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// Exit 1 when any error was counted (or not every node connected).
    #[arg(long)]
    expect_zero_errors: bool,
    /// Progress to stderr every this many seconds (0: none).
    #[arg(long, default_value_t = 0.0)]
    report_every: f64,
}

fn read_token(path: &std::path::Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(Secret::new(t))
}

fn token(args: &Args) -> Result<Option<Secret>> {
    if let Some(path) = &args.token_file {
        return read_token(path).map(Some);
    }
    Ok(std::env::var("CLAWNODE_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| Secret::new(t.trim())))
}

/// Raises the soft open-file limit to the hard one: one socket per node.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // `None` is RLIM_INFINITY, the largest limit.
    let lim = getrlimit(Resource::Nofile);
    if lim.current.unwrap_or(u64::MAX) < lim.maximum.unwrap_or(u64::MAX) {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        // Best effort: on failure the soft limit stays as it was.
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0 && s.is_finite()).then(|| Duration::from_secs_f64(s))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    raise_nofile();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clawnode-load: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("clawnode-load: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    if args.nodes == 0 || args.concurrency == 0 {
        bail!("--nodes and --concurrency must be at least 1");
    }
    let token = token(&args)?;
    let operator_token = match &args.operator_token_file {
        Some(path) => Some(read_token(path)?),
        None => token.clone(),
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let shared = Arc::new(Shared {
        url: args.url.clone(),
        token,
        operator_token,
        facts: HostFacts::collect(),
        stats: Stats::default(),
        beacon_every: secs(args.beacon_interval),
        stats_every: secs(args.stats_interval),
        device_tokens: Default::default(),
    });
    let identities = |n: usize| -> Vec<DeviceIdentity> {
        (0..n)
            .map(|i| DeviceIdentity::ephemeral(format!("load-{run_id}-{i}")))
            .collect()
    };
    let started = Instant::now();
    let progress = spawn_progress(&shared, secs(args.report_every));
    let ok = match args.mode {
        Mode::Hold | Mode::Storm => {
            let nodes = identities(args.nodes);
            let (stop_tx, stop_rx) = watch::channel(false);
            let gate = Arc::new(Semaphore::new(args.concurrency));
            let storm = args.mode == Mode::Storm;
            let mut tasks = Vec::with_capacity(nodes.len());
            for identity in nodes {
                let run = NodeRun {
                    shared: shared.clone(),
                    gate: gate.clone(),
                    stop: stop_rx.clone(),
                    reconnect: storm,
                };
                tasks.push(tokio::spawn(Node::new(identity).run(run)));
            }
            // All connected (or failed) first.
            let ramp_limit =
                Duration::from_secs(120).max(secs(args.storm_timeout).unwrap_or_default());
            shared.stats.wait_connected(args.nodes, ramp_limit).await;
            let ramp = started.elapsed();
            let operator = (args.presence_rate > 0.0).then(|| {
                tokio::spawn(node::presence_caller(
                    shared.clone(),
                    args.presence_rate,
                    stop_rx.clone(),
                ))
            });
            if storm {
                shared
                    .stats
                    .wait_storm(args.nodes, Duration::from_secs_f64(args.storm_timeout))
                    .await;
            } else {
                tokio::time::sleep(secs(args.duration).unwrap_or_default()).await;
            }
            let _ = stop_tx.send(true);
            if let Some(op) = operator {
                let _ = op.await;
            }
            for t in tasks {
                let _ = t.await;
            }
            let report = shared
                .stats
                .report(&args_json(&args), started.elapsed(), Some(ramp));
            finish(report, &args, &shared.stats)
        }
        Mode::Handshakes => {
            let pool = if args.no_fresh {
                identities(args.nodes)
            } else {
                Vec::new()
            };
            let pool = Arc::new(pool);
            let deadline = Instant::now() + secs(args.duration).unwrap_or_default();
            let t0 = Instant::now();
            let mut workers = Vec::new();
            for w in 0..args.concurrency {
                let shared = shared.clone();
                let pool = pool.clone();
                let run_id = run_id.clone();
                workers.push(tokio::spawn(async move {
                    let mut i = w;
                    while Instant::now() < deadline {
                        let identity = if pool.is_empty() {
                            DeviceIdentity::ephemeral(format!("load-{run_id}-h{i}"))
                        } else {
                            // Identities are shared by index; a key signs many connects.
                            pool[i % pool.len()].clone()
                        };
                        node::handshake_once(&shared, &identity).await;
                        i += args.concurrency;
                    }
                }));
            }
            for w in workers {
                let _ = w.await;
            }
            let report = shared.stats.report(&args_json(&args), t0.elapsed(), None);
            finish(report, &args, &shared.stats)
        }
    };
    if let Some(p) = progress {
        p.abort();
    }
    Ok(ok)
}

fn spawn_progress(
    shared: &Arc<Shared>,
    every: Option<Duration>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = every?;
    let shared = shared.clone();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            eprintln!("{}", shared.stats.progress());
        }
    }))
}

fn args_json(args: &Args) -> serde_json::Value {
    serde_json::json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "url": args.url,
        "nodes": args.nodes,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "beacon_interval_s": args.beacon_interval,
        "stats_interval_s": args.stats_interval,
        "presence_rate": args.presence_rate,
    })
}

fn finish(report: serde_json::Value, args: &Args, stats: &Stats) -> bool {
    println!("{report}");
    if !args.expect_zero_errors {
        return true;
    }
    let errors = stats.error_count();
    let short = args.mode != Mode::Handshakes && stats.peak_connected() < args.nodes;
    if errors > 0 || short {
        eprintln!(
            "clawnode-load: {errors} errors, {} of {} connected",
            stats.peak_connected(),
            args.nodes
        );
        return false;
    }
    true
}
