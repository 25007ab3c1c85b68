//! Criterion benchmarks of the gateway's hot paths (docs/PERFORMANCE.md):
//! the presence store (upsert, beacon, list, eviction) at 200 rows (the
//! spec's cap) and 10,000 rows, the `system-presence` answer, hello-ok
//! serialization, a signed node `connect`: frame parse, params check and
//! Ed25519 verification, as the handshake does them, and the device
//! registry's claim (the instance pin check) with 0 and 100,000 pins.
//!
//!     cargo bench --bench hot_paths
//!     cargo bench --bench hot_paths -- presence/list   # one group

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use clawnode::agent::session::{signed_node_connect, Credentials};
use clawnode::config::Secret;
use clawnode::identity::DeviceIdentity;
use clawnode::presence::{ConnectionInfo, PresenceKey, PresenceLimits, PresenceStore};
use clawnode::protocol::device_auth::{self, Expected};
use clawnode::protocol::{
    ClientInfo, ConnectChallenge, ConnectParams, Frame, HelloOk, PresenceEntry, Role,
    SystemEventParams,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const NOW: u64 = 1_763_000_000_000;

fn node_client(n: usize) -> ClientInfo {
    ClientInfo {
        id: "node-host".into(),
        display_name: Some(format!("host-{n:05}.fleet.example")),
        version: "0.1.0".into(),
        platform: "linux".into(),
        device_family: Some("Linux".into()),
        model_identifier: Some("x86_64".into()),
        mode: "node".into(),
        instance_id: Some(format!("bench-{n:05}-7f3a9c2e")),
    }
}

fn beacon(n: usize) -> SystemEventParams {
    SystemEventParams {
        text: format!("Node: host-{n:05}.fleet.example (10.1.2.3) · app 0.1.0 · last input 12s ago · mode node · reason periodic"),
        instance_id: Some(format!("bench-{n:05}-7f3a9c2e")),
        host: Some(format!("host-{n:05}.fleet.example")),
        ip: Some(format!("10.1.{}.{}", n / 250, n % 250)),
        version: Some("0.1.0".into()),
        platform: Some("linux".into()),
        device_family: Some("Linux".into()),
        model_identifier: Some("x86_64".into()),
        mode: Some("node".into()),
        last_input_seconds: Some(12),
        reason: Some("periodic".into()),
    }
}

fn self_entry() -> PresenceEntry {
    PresenceEntry {
        instance_id: Some("gateway-1".into()),
        host: Some("gw".into()),
        mode: Some("gateway".into()),
        reason: Some("self".into()),
        version: Some("0.1.0".into()),
        platform: Some("linux".into()),
        ts: NOW,
        ..PresenceEntry::default()
    }
}

/// A store with `rows` connected node rows (each with a beacon merged),
/// capped at `max_entries`.
fn store(rows: usize, max_entries: usize) -> PresenceStore {
    let mut store = PresenceStore::new(
        self_entry(),
        PresenceLimits {
            ttl_ms: 300_000,
            max_entries,
        },
    );
    let scopes: Vec<String> = Vec::new();
    for n in 0..rows {
        let client = node_client(n);
        let conn_id = format!("conn-{n}");
        let device_id = format!("{n:064x}");
        let key = store
            .connect(
                &ConnectionInfo {
                    conn_id: &conn_id,
                    client: &client,
                    role: Role::Node,
                    scopes: &scopes,
                    device_id: Some(&device_id),
                    remote_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
                },
                NOW + n as u64,
            )
            .expect("node rows are kept");
        store.beacon(&key, &beacon(n), None, NOW + n as u64);
    }
    store
}

fn presence(c: &mut Criterion) {
    for (rows, cap) in [(199, 200), (9_999, 10_000)] {
        let label = rows + 1;
        let mut g = c.benchmark_group(format!("presence/{label}"));
        let base = store(rows, cap);

        g.bench_function("list", |b| {
            let mut s = base.clone();
            b.iter(|| black_box(s.list(black_box(NOW + 20_000))))
        });
        g.bench_function("list_json", |b| {
            let mut s = base.clone();
            b.iter(|| black_box(s.list_json(black_box(NOW + 20_000))))
        });
        // After a tick every connected row has the same `ts`: ties are
        // broken by key.
        g.bench_function("list_json_after_tick", |b| {
            let mut s = base.clone();
            s.touch_connected(NOW + 20_000);
            b.iter(|| black_box(s.list_json(black_box(NOW + 20_000))))
        });
        g.bench_function("beacon_existing_row", |b| {
            let mut s = base.clone();
            let key = PresenceKey::normalize("bench-00042-7f3a9c2e").expect("key");
            let params = beacon(42);
            let mut t = NOW + 20_000;
            b.iter(|| {
                t += 1;
                s.beacon(&key, black_box(&params), None, t);
            })
        });
        g.bench_function("beacon_then_list_json", |b| {
            let mut s = base.clone();
            let key = PresenceKey::normalize("bench-00042-7f3a9c2e").expect("key");
            let params = beacon(42);
            let mut t = NOW + 20_000;
            b.iter(|| {
                t += 1;
                s.beacon(&key, &params, None, t);
                black_box(s.list_json(t))
            })
        });
        // A new node when the store is full: upsert plus eviction of the
        // oldest row (rule 7).
        g.bench_function("connect_new_row_at_cap", |b| {
            let scopes: Vec<String> = Vec::new();
            let clients: Vec<ClientInfo> = (0..4096).map(|n| node_client(100_000 + n)).collect();
            b.iter_batched_ref(
                || base.clone(),
                |s| {
                    for (n, client) in clients.iter().take(64).enumerate() {
                        s.connect(
                            &ConnectionInfo {
                                conn_id: "conn-new",
                                client,
                                role: Role::Node,
                                scopes: &scopes,
                                device_id: None,
                                remote_ip: None,
                            },
                            NOW + 50_000 + n as u64,
                        );
                    }
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("prune_expired_all", |b| {
            b.iter_batched_ref(
                || {
                    let mut s = base.clone();
                    // Disconnect every row so the TTL applies to it.
                    for n in 0..rows {
                        let key =
                            PresenceKey::normalize(&format!("bench-{n:05}-7f3a9c2e")).expect("key");
                        s.disconnect(&key, NOW);
                    }
                    s
                },
                |s| black_box(s.prune(NOW + 400_000)),
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

/// A signed node `connect` as our agent sends it, and what the gateway
/// checks it against.
struct SignedConnect {
    text: String,
    nonce: String,
    token: String,
}

/// The agent's own signed `connect` (`signed_node_connect`, v3 payload).
fn signed_connect() -> SignedConnect {
    let identity = DeviceIdentity::ephemeral("bench-00001-7f3a9c2e");
    let challenge = ConnectChallenge {
        nonce: "bWFkZS11cC1ub25jZS1mb3ItdGhlLWJlbmNobWFyaw".to_string(),
        ts: NOW,
    };
    let token = "0123456789abcdef0123456789abcdef".to_string();
    let credentials = Credentials {
        shared: Some(Secret::new(token.clone())),
        device_token: None,
    };
    let params = signed_node_connect(&identity, node_client(1), &credentials, &challenge);
    SignedConnect {
        text: Frame::request("c1", "connect", &params).to_text(),
        nonce: challenge.nonce,
        token,
    }
}

/// What the handshake does with the text of a `connect`: parse the frame,
/// read and check the params, verify the device signature.
fn check_connect(signed: &SignedConnect) -> bool {
    let Ok(Frame::Req(req)) = Frame::parse(&signed.text) else {
        return false;
    };
    let Ok(params) = ConnectParams::from_value(req.params) else {
        return false;
    };
    if params.client.validate().is_err() {
        return false;
    }
    let Some(proof) = &params.device else {
        return false;
    };
    // The gateway checks the shared token before the proof, which covers it.
    if params.token() != Some(signed.token.as_str()) {
        return false;
    }
    let expected = Expected::for_connect(&params, &signed.nonce, NOW);
    device_auth::verify(proof, &expected).is_ok()
}

fn connect(c: &mut Criterion) {
    let signed = signed_connect();
    assert!(
        check_connect(&signed),
        "the benchmark's connect must verify"
    );
    let mut g = c.benchmark_group("connect");
    g.bench_function("parse", |b| {
        b.iter(|| black_box(Frame::parse(black_box(&signed.text))))
    });
    g.bench_function("parse_and_verify", |b| {
        b.iter(|| black_box(check_connect(black_box(&signed))))
    });
    g.finish();
}

fn hello(presence: Vec<PresenceEntry>) -> HelloOk {
    let mut hello: HelloOk = serde_json::from_value(serde_json::json!({
        "type": "hello-ok",
        "protocol": 4,
        "server": { "version": "0.1.0", "connId": "5f0c2a8e-1f4b-4c1e-9d7a-0c3b2e1f4a5d" },
        "features": {
            "methods": ["health", "system-presence", "system-event", "node.event", "node.list"],
            "events": ["connect.challenge", "presence", "tick", "shutdown"]
        },
        "snapshot": { "health": { "ok": true, "ts": NOW }, "stateVersion": { "presence": 7, "health": 1 }, "uptimeMs": 1000 },
        "auth": { "role": "node", "scopes": [] },
        "policy": { "maxPayload": 1048576, "maxBufferedBytes": 268435456, "tickIntervalMs": 30000 }
    }))
    .expect("a valid hello-ok");
    hello.snapshot.presence = presence;
    hello
}

fn serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("serialize");
    let mut s = store(199, 200);
    let now = NOW + 20_000;
    let list = s.list(now);
    assert_eq!(
        Frame::parse(&Frame::ok_text("req-1", &s.list_json(now))).ok(),
        Some(Frame::ok("req-1", &list))
    );
    // The `system-presence` answer with 200 rows as it was first built:
    // clone every row, convert to a serde_json::Value, serialize.
    g.bench_function("presence_200_answer_via_value", |b| {
        b.iter(|| {
            let list = s.list(black_box(now));
            black_box(Frame::ok("req-1", serde_json::to_value(list).unwrap_or_default()).to_text())
        })
    });
    // As it is answered now: the store's cached row JSON, spliced.
    g.bench_function("presence_200_answer", |b| {
        b.iter(|| {
            black_box(Frame::ok_text_with(black_box("req-1"), 200 * 320, |text| {
                s.write_list_json(text, now)
            }))
        })
    });
    // hello-ok for a node (no presence, as OpenClaw projects it) and for an
    // operator with 200 rows, before and after the splice.
    let node_hello = hello(Vec::new());
    g.bench_function("hello_ok_node", |b| {
        b.iter(|| black_box(node_hello.response_text(black_box("c1"), "[]")))
    });
    let full_hello = hello(list.clone());
    g.bench_function("hello_ok_operator_200_via_value", |b| {
        b.iter(|| black_box(Frame::ok("c1", black_box(&full_hello)).to_text()))
    });
    g.bench_function("hello_ok_operator_200", |b| {
        b.iter(|| black_box(node_hello.response_text(black_box("c1"), &s.list_json(now))))
    });
    g.finish();
}

/// The registry's pin check as the handshake makes it, in a registry that
/// holds `pins` pins (imported from a generated `pins.json`, as an upgrade
/// does): a known device reconnecting, a first claim (a commit by the writer
/// thread), and the known-device lookup of part 9's rate limit.
fn registry(c: &mut Criterion) {
    use clawnode::gateway::registry::{
        Claim, Device, DeviceRegistry, MemoryRegistry, SqliteRegistry,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let device = |id: &str| Device {
        id: id.to_string(),
        public_key: format!("pk-{id}"),
        role: Some(Role::Node),
        address: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))),
        display_name: Some("bench".into()),
        join_token: None,
    };
    let claim = |key: &str, id: &str| Claim {
        key: key.to_string(),
        device: device(id),
        now_ms: NOW,
        token: None,
    };
    for pins in [0usize, 100_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let file: serde_json::Map<String, serde_json::Value> = (0..pins)
            .map(|i| {
                let pin = serde_json::json!({"deviceId": format!("{i:064x}"), "pinnedAtMs": NOW});
                (format!("bench-{i:08}"), pin)
            })
            .collect();
        let text = serde_json::json!({"version": 1, "pins": file}).to_string();
        std::fs::write(dir.path().join("pins.json"), text).expect("pins.json");
        let sqlite = SqliteRegistry::open(dir.path()).expect("registry");
        let memory = MemoryRegistry::new();
        for i in 0..pins {
            memory.claim_now(&claim(&format!("bench-{i:08}"), &format!("{i:064x}")));
        }
        for registry in [&sqlite as &dyn DeviceRegistry, &memory] {
            rt.block_on(registry.claim(claim("known-instance", "known-device")))
                .expect("claim");
        }
        let mut g = c.benchmark_group(format!("registry/{pins}_pins"));
        g.bench_function("sqlite_claim_known", |b| {
            b.iter(|| rt.block_on(sqlite.claim(claim("known-instance", "known-device"))))
        });
        g.bench_function("memory_claim_known", |b| {
            b.iter(|| rt.block_on(memory.claim(claim("known-instance", "known-device"))))
        });
        let mut n = 0u64;
        g.bench_function("sqlite_claim_new", |b| {
            b.iter(|| {
                n += 1;
                let key = format!("new-{n}");
                rt.block_on(sqlite.claim(claim(&key, &format!("dev-{n}"))))
            })
        });
        g.bench_function("sqlite_is_known_device", |b| {
            b.iter(|| black_box(sqlite.is_known_device(black_box("known-device"))))
        });
        g.finish();
    }
}

criterion_group!(benches, presence, connect, serialize, registry);
criterion_main!(benches);
