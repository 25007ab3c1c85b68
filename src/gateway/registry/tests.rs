use std::path::Path;

use rusqlite::Connection;

use super::*;

fn device(id: &str, role: Role) -> Device {
    Device {
        id: id.to_string(),
        public_key: format!("pk-{id}"),
        role: Some(role),
        address: Some("192.0.2.7".parse().expect("address")),
        display_name: Some(format!("host-{id}")),
        join_token: None,
    }
}

fn claim(key: &str, device_id: &str, now_ms: u64) -> Claim {
    Claim {
        key: key.to_string(),
        device: device(device_id, Role::Node),
        now_ms,
        token: None,
    }
}

fn block<T>(f: BoxFuture<'static, T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn conflict_with(check: ClaimCheck) -> Pin {
    match check {
        ClaimCheck::Conflict(pin) => pin,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn decide_first_claim_pins_and_a_device_id_belongs_to_its_device() {
    let none = Found::default();
    assert_eq!(
        decide(&claim("i-1", "a", 1), &none),
        Decision::PinToClaimant
    );
    let pinned_to_a = Found {
        pin: Some(Pin {
            device_id: "a".into(),
            pinned_at_ms: 1,
            display_name: None,
        }),
        device_with_key_as_id: None,
    };
    assert_eq!(
        decide(&claim("i-1", "a", 2), &pinned_to_a),
        Decision::Keep(ClaimCheck::Known)
    );
    assert!(matches!(
        decide(&claim("i-1", "b", 2), &pinned_to_a),
        Decision::Keep(ClaimCheck::Conflict(_))
    ));
    // A key that is another known device's id is that device's.
    let a_is_a_device = Found {
        pin: None,
        device_with_key_as_id: Some((5, Some("web-1".into()))),
    };
    let Decision::Keep(ClaimCheck::Conflict(pin)) = decide(&claim("a", "b", 6), &a_is_a_device)
    else {
        panic!("another key claiming a device id must be refused");
    };
    assert_eq!((pin.device_id.as_str(), pin.pinned_at_ms), ("a", 5));
    // A device's own id is its own, even over a pin made on it before.
    assert_eq!(decide(&claim("a", "a", 6), &none), Decision::OwnId);
    let squatted = Found {
        pin: Some(Pin {
            device_id: "b".into(),
            pinned_at_ms: 1,
            display_name: None,
        }),
        device_with_key_as_id: None,
    };
    assert_eq!(
        decide(&claim("a", "a", 6), &squatted),
        Decision::PinToClaimant
    );
}

/// The rules every implementation must keep, run against each.
fn keeps_the_rules(registry: &dyn DeviceRegistry) {
    assert_eq!(
        block(registry.claim(claim("i-1", "a", 1))).unwrap(),
        ClaimCheck::New
    );
    assert!(registry.is_known_device("a"));
    assert!(!registry.is_known_device("b"));
    assert_eq!(
        block(registry.claim(claim("i-1", "a", 2))).unwrap(),
        ClaimCheck::Known
    );
    let pin = conflict_with(block(registry.claim(claim("i-1", "b", 3))).unwrap());
    assert_eq!(pin.device_id, "a");
    assert_eq!(pin.display_name.as_deref(), Some("host-a"));
    // A refused device is not recorded.
    assert!(!registry.is_known_device("b"));
    // Device-id keys: the own id is the device's; another key is refused.
    assert_eq!(
        block(registry.claim(claim("a", "a", 4))).unwrap(),
        ClaimCheck::Known
    );
    assert_eq!(
        block(registry.claim(claim("c", "c", 4))).unwrap(),
        ClaimCheck::New
    );
    let pin = conflict_with(block(registry.claim(claim("c", "a", 5))).unwrap());
    assert_eq!(pin.device_id, "c");
    // A key pinned before its device was known goes to the device.
    assert_eq!(
        block(registry.claim(claim("d", "a", 6))).unwrap(),
        ClaimCheck::New
    );
    assert_eq!(
        block(registry.claim(claim("d", "d", 7))).unwrap(),
        ClaimCheck::New
    );
    assert_eq!(registry.pin("d").unwrap().unwrap().device_id, "d");
    assert!(matches!(
        block(registry.claim(claim("d", "a", 8))).unwrap(),
        ClaimCheck::Conflict(_)
    ));
    // Forget frees a pin for the next key.
    assert_eq!(registry.forget("i-1").unwrap().unwrap().device_id, "a");
    assert_eq!(registry.forget("i-1").unwrap(), None);
    assert_eq!(
        block(registry.claim(claim("i-1", "b", 9))).unwrap(),
        ClaimCheck::New
    );
    registry.flush().unwrap();
    let counts = registry.counts().unwrap();
    assert_eq!(counts.devices, 4, "{counts:?}"); // a, b, c, d
    assert_eq!(counts.pins, 2, "{counts:?}"); // i-1 → b, d → d
}

#[test]
fn memory_registry_keeps_the_rules() {
    keeps_the_rules(&MemoryRegistry::new());
}

#[test]
fn sqlite_registry_keeps_the_rules_and_its_records_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let registry = SqliteRegistry::open(dir.path()).unwrap();
        keeps_the_rules(&registry);
    }
    let registry = SqliteRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.pin("i-1").unwrap().unwrap().device_id, "b");
    assert!(registry.is_known_device("c"));
    let pin = conflict_with(block(registry.claim(claim("i-1", "a", 10))).unwrap());
    assert_eq!(pin.pinned_at_ms, 9);
    // The file is the owner's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join(REGISTRY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

fn query_one(path: &Path, sql: &str) -> String {
    let conn = Connection::open(path).unwrap();
    conn.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
        .unwrap()
        .unwrap_or_default()
}

#[test]
fn a_device_seen_again_gets_its_key_role_address_and_time_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let registry = SqliteRegistry::open(dir.path()).unwrap();
    block(registry.claim(claim("i-1", "a", 1_000))).unwrap();
    let mut again = claim("i-1", "a", 1_000 + SEEN_EVERY_MS_FOR_TESTS + 1);
    again.device.role = Some(Role::Operator);
    again.device.address = Some("198.51.100.9".parse().unwrap());
    assert_eq!(block(registry.claim(again)).unwrap(), ClaimCheck::Known);
    registry.flush().unwrap();
    let db = dir.path().join(REGISTRY_FILE);
    let row = query_one(
        &db,
        "SELECT json_array(public_key, roles, last_address, last_seen_ms, first_seen_ms, state)
         FROM devices WHERE device_id = 'a'",
    );
    assert_eq!(
        row,
        r#"["pk-a","[\"node\",\"operator\"]","198.51.100.9",61001,1000,"approved"]"#
    );
}

const SEEN_EVERY_MS_FOR_TESTS: u64 = 60_000;

fn write_pins_json(dir: &Path, pins: &[(&str, &str)]) -> String {
    let pins: serde_json::Map<String, serde_json::Value> = pins
        .iter()
        .enumerate()
        .map(|(i, (id, dev))| {
            let pin = serde_json::json!({"deviceId": dev, "pinnedAtMs": 100 + i as u64, "displayName": format!("h{i}")});
            (id.to_string(), pin)
        })
        .collect();
    let text = serde_json::json!({"version": 1, "pins": pins}).to_string();
    std::fs::write(dir.join(PINS_FILE), &text).unwrap();
    text
}

#[test]
fn pins_json_is_imported_once_whole_then_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let text = write_pins_json(
        dir.path(),
        &[("Inst-A", "a"), ("inst-b", "b"), ("inst-c", "a")],
    );
    {
        let registry = SqliteRegistry::open(dir.path()).unwrap();
        assert_eq!(
            registry.counts().unwrap(),
            Counts {
                devices: 2,
                pins: 3,
                approved: 2,
                ..Counts::default()
            }
        );
        // Keys are lower-cased as instance ids are matched.
        let pin = conflict_with(block(registry.claim(claim("inst-a", "z", 5))).unwrap());
        assert_eq!((pin.device_id.as_str(), pin.pinned_at_ms), ("a", 100));
        assert_eq!(pin.display_name.as_deref(), Some("h0"));
        assert!(registry.is_known_device("b"));
        assert_eq!(
            block(registry.claim(claim("inst-b", "b", 6))).unwrap(),
            ClaimCheck::Known
        );
    }
    assert!(!dir.path().join(PINS_FILE).exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join(PINS_FILE_MIGRATED)).unwrap(),
        text
    );
    // The key of a migrated device is filled in when it connects again.
    assert_eq!(
        query_one(
            &dir.path().join(REGISTRY_FILE),
            "SELECT public_key FROM devices WHERE device_id = 'b'"
        ),
        "pk-b"
    );

    // A file whose rename failed is recognised as imported: a pin forgotten
    // since does not come back.
    std::fs::copy(
        dir.path().join(PINS_FILE_MIGRATED),
        dir.path().join(PINS_FILE),
    )
    .unwrap();
    {
        let registry = SqliteRegistry::open(dir.path()).unwrap();
        assert!(registry.forget("inst-c").unwrap().is_some());
    }
    std::fs::copy(
        dir.path().join(PINS_FILE_MIGRATED),
        dir.path().join(PINS_FILE),
    )
    .unwrap();
    let registry = SqliteRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.pin("inst-c").unwrap(), None);
    assert!(!dir.path().join(PINS_FILE).exists());
}

#[test]
fn a_failed_import_keeps_every_pin_in_the_file_and_none_in_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(REGISTRY_FILE);
    drop(SqliteRegistry::open(dir.path()).unwrap());
    // Fail the import halfway: the third of five pins cannot be stored.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON instances WHEN NEW.instance_id = 'i-3'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let pins = [
        ("i-1", "a"),
        ("i-2", "b"),
        ("i-3", "c"),
        ("i-4", "d"),
        ("i-5", "e"),
    ];
    let text = write_pins_json(dir.path(), &pins);
    let err = SqliteRegistry::open(dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(PINS_FILE)).unwrap(),
        text
    );
    assert_eq!(
        query_one(&db, "SELECT CAST(count(*) AS TEXT) FROM instances"),
        "0"
    );
    assert_eq!(
        query_one(&db, "SELECT CAST(count(*) AS TEXT) FROM devices"),
        "0"
    );
    // Fixed, the next start imports all of them.
    Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TRIGGER fail")
        .unwrap();
    let registry = SqliteRegistry::open(dir.path()).unwrap();
    assert_eq!(
        registry.counts().unwrap(),
        Counts {
            devices: 5,
            pins: 5,
            approved: 5,
            ..Counts::default()
        }
    );
}

#[test]
fn a_damaged_pins_file_or_database_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(PINS_FILE),
        "{\"version\":1,\"pins\":{\"x\":",
    )
    .unwrap();
    let err = format!("{:#}", SqliteRegistry::open(dir.path()).unwrap_err());
    assert!(
        err.contains("pins.json") && err.contains("damaged"),
        "{err}"
    );
    assert!(dir.path().join(PINS_FILE).exists());

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(REGISTRY_FILE), vec![b'x'; 8192]).unwrap();
    let err = format!("{:#}", SqliteRegistry::open(dir.path()).unwrap_err());
    assert!(err.contains("registry.sqlite"), "{err}");
    assert!(err.contains("restore it from a backup"), "{err}");
}

#[test]
fn a_registry_from_a_newer_clawnode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteRegistry::open(dir.path()).unwrap());
    Connection::open(dir.path().join(REGISTRY_FILE))
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = format!("{:#}", SqliteRegistry::open(dir.path()).unwrap_err());
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn concurrent_first_claims_of_one_key_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let registry = std::sync::Arc::new(SqliteRegistry::open(dir.path()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let checks = rt.block_on(async {
        let claims: Vec<_> = (0..32)
            .map(|i| registry.claim(claim("contested", &format!("dev-{i}"), 1)))
            .collect();
        futures_util::future::join_all(claims).await
    });
    let new = checks
        .iter()
        .filter(|c| matches!(c, Ok(ClaimCheck::New)))
        .count();
    let refused = checks
        .iter()
        .filter(|c| matches!(c, Ok(ClaimCheck::Conflict(_))))
        .count();
    assert_eq!((new, refused), (1, 31), "{checks:?}");
}

#[test]
fn forget_offline_imports_pins_json_first() {
    let dir = tempfile::tempdir().unwrap();
    write_pins_json(dir.path(), &[("inst-a", "a"), ("inst-b", "b")]);
    assert!(exists_in(dir.path()));
    assert_eq!(
        forget_offline(dir.path(), " INST-A ")
            .unwrap()
            .unwrap()
            .device_id,
        "a"
    );
    let registry = SqliteRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.pin("inst-a").unwrap(), None);
    assert_eq!(registry.pin("inst-b").unwrap().unwrap().device_id, "b");
}

/// Device states and operator changes, the same in every implementation.
fn keeps_device_states(registry: &dyn DeviceRegistry) {
    let set = |id: &str, state: DeviceState, device: Option<Device>| {
        registry
            .change(Change::SetState {
                device_id: id.to_string(),
                state,
                by: Some("op".into()),
                device,
                now_ms: 50,
            })
            .expect("change")
    };
    assert_eq!(registry.device_state("a").expect("state"), None);
    // An unknown device without its details is not created.
    assert_eq!(set("a", DeviceState::Revoked, None), None);
    block(registry.claim(claim("i-1", "a", 10))).expect("claim");
    assert_eq!(
        registry.device_state("a").expect("state"),
        Some(DeviceState::Approved)
    );
    let revoked = set("a", DeviceState::Revoked, None).expect("record");
    assert_eq!(revoked.state, DeviceState::Revoked);
    assert_eq!(revoked.instance_ids, vec!["i-1".to_string()]);
    assert_eq!(revoked.roles, vec!["node".to_string()]);
    assert_eq!(revoked.last_address.as_deref(), Some("192.0.2.7"));
    assert_eq!(
        registry.device_state("a").expect("state"),
        Some(DeviceState::Revoked)
    );
    // Approving a pending device creates its record, approved by whom.
    let b = set("b", DeviceState::Approved, Some(device("b", Role::Node))).expect("record");
    assert_eq!(
        (b.state, b.approved_by.as_deref(), b.approved_at_ms),
        (DeviceState::Approved, Some("op"), Some(50))
    );
    let all = registry.devices().expect("list");
    assert_eq!(
        all.iter().map(|r| r.device_id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let labelled = registry
        .change(Change::Label {
            device_id: "b".into(),
            label: "rack 4".into(),
        })
        .expect("label")
        .expect("record");
    assert_eq!(labelled.label.as_deref(), Some("rack 4"));
    // Removal drops the record and its pins.
    let removed = registry
        .change(Change::Remove {
            device_id: "a".into(),
        })
        .expect("remove")
        .expect("record");
    assert_eq!(removed.device_id, "a");
    assert_eq!(registry.device_state("a").expect("state"), None);
    assert_eq!(registry.pin("i-1").expect("pin"), None);
}

#[test]
fn memory_registry_keeps_device_states() {
    keeps_device_states(&MemoryRegistry::new());
}

#[test]
fn sqlite_registry_keeps_device_states_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    keeps_device_states(&SqliteRegistry::open(dir.path()).expect("open"));
    let reopened = SqliteRegistry::open(dir.path()).expect("reopen");
    assert_eq!(
        reopened.device_state("b").expect("state"),
        Some(DeviceState::Approved)
    );
    let b = reopened.devices().expect("list");
    assert_eq!(b[0].label.as_deref(), Some("rack 4"));
}

fn new_join_token(id: &str, secret: &str, now: u64, ttl: u64, uses: u64) -> NewJoinToken {
    use sha2::{Digest, Sha256};
    NewJoinToken {
        token: JoinToken {
            id: id.to_string(),
            description: Some(format!("for {id}")),
            created_at_ms: now,
            created_by: Some("op".into()),
            expires_at_ms: now + ttl,
            uses,
            used: 0,
            last_used_at_ms: None,
            revoked_at_ms: None,
        },
        sha256: Sha256::digest(secret.as_bytes()).into(),
    }
}

fn digest(secret: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes()).into()
}

fn with_token(mut claim: Claim, id: &str) -> Claim {
    claim.device.join_token = Some(id.to_string());
    claim
}

/// Join tokens (part 6), the same in every implementation: found by the
/// digest of the secret; a new device enrolling with one takes a use, in
/// the same step that stores its record (so the last use has one taker);
/// a known device takes none; the record names the token; an operator's
/// approval of a request made with one counts; at most `MAX_LIVE` live;
/// dead ones deleted after `JOIN_TOKEN_KEPT_MS`.
fn keeps_join_tokens(registry: &dyn DeviceRegistry) {
    use crate::protocol::join_token::{JoinTokenState, MAX_LIVE};
    let created = |new: NewJoinToken| match registry.create_join_token(new).expect("create") {
        JoinTokenCreated::Created(t) => t,
        JoinTokenCreated::TooMany(n) => panic!("too many: {n}"),
    };
    let t = created(new_join_token("aaaaaaaaaaaa", "cnjoin_a", 100, 1000, 1));
    assert_eq!((t.used, t.uses, t.expires_at_ms), (0, 1, 1100));
    let found = registry.join_token(&digest("cnjoin_a")).expect("lookup");
    assert_eq!(found.as_ref().map(|t| t.id.as_str()), Some("aaaaaaaaaaaa"));
    assert_eq!(
        registry.join_token(&digest("cnjoin_b")).expect("lookup"),
        None
    );

    // One use: the first new device takes it, the second is refused.
    let first = block(registry.claim(with_token(claim("i-1", "a", 200), "aaaaaaaaaaaa")));
    assert_eq!(first.expect("claim"), ClaimCheck::New);
    let second = block(registry.claim(with_token(claim("i-2", "b", 201), "aaaaaaaaaaaa")));
    let ClaimCheck::JoinTokenRefused(Some(spent)) = second.expect("claim") else {
        panic!("a second new device took a used-up token");
    };
    assert_eq!(spent.state(201), JoinTokenState::UsedUp);
    assert!(
        !registry.is_known_device("b"),
        "the refused device was stored"
    );
    // The device enrolled with it reconnects: known, no use taken.
    let again = block(registry.claim(with_token(claim("i-1", "a", 300), "aaaaaaaaaaaa")));
    assert_eq!(again.expect("claim"), ClaimCheck::Known);
    let t = registry.join_token(&digest("cnjoin_a")).unwrap().unwrap();
    assert_eq!((t.used, t.last_used_at_ms), (1, Some(200)));
    let records = registry.devices().expect("devices");
    assert_eq!(records[0].join_token_id.as_deref(), Some("aaaaaaaaaaaa"));
    // Expired: refused to a new device even with uses left.
    created(new_join_token("bbbbbbbbbbbb", "cnjoin_b", 100, 1000, 5));
    let late = block(registry.claim(with_token(claim("i-3", "c", 1100), "bbbbbbbbbbbb")));
    assert!(matches!(
        late.expect("claim"),
        ClaimCheck::JoinTokenRefused(Some(_))
    ));

    // An operator approving a pending request made with a token: the
    // record names it and its use counts, left or not.
    let mut pending = device("d", Role::Node);
    pending.join_token = Some("aaaaaaaaaaaa".into());
    let d = registry
        .change(Change::SetState {
            device_id: "d".into(),
            state: DeviceState::Approved,
            by: Some("op".into()),
            device: Some(pending),
            now_ms: 400,
        })
        .expect("approve")
        .expect("record");
    assert_eq!(d.join_token_id.as_deref(), Some("aaaaaaaaaaaa"));
    let t = registry.join_token(&digest("cnjoin_a")).unwrap().unwrap();
    assert_eq!(t.used, 2);

    // Last use, at most as the caller tells (the caller throttles).
    registry.join_token_used("aaaaaaaaaaaa", 500);
    registry.flush().expect("flush");
    let t = registry.join_token(&digest("cnjoin_a")).unwrap().unwrap();
    assert_eq!(t.last_used_at_ms, Some(500));

    // Revoked: kept, dead; revoking again keeps the first time.
    let r = registry
        .revoke_join_token("aaaaaaaaaaaa", 600)
        .unwrap()
        .unwrap();
    assert_eq!(r.revoked_at_ms, Some(600));
    let r = registry
        .revoke_join_token("aaaaaaaaaaaa", 700)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.revoked_at_ms, r.state(700)),
        (Some(600), JoinTokenState::Revoked)
    );
    assert_eq!(registry.revoke_join_token("nope", 700).unwrap(), None);

    // Newest first.
    let ids: Vec<String> = registry
        .join_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]);

    // At most MAX_LIVE live at once (the two above are dead at 2000).
    for n in 0..MAX_LIVE {
        created(new_join_token(
            &format!("live{n:08}"),
            &format!("s{n}"),
            2000,
            1000,
            1,
        ));
    }
    let over = registry
        .create_join_token(new_join_token("over", "s-over", 2000, 1000, 1))
        .expect("create");
    assert_eq!(over, JoinTokenCreated::TooMany(MAX_LIVE));
    // Once they expire there is room; tokens dead for JOIN_TOKEN_KEPT_MS go.
    let later = 2000 + 1000 + JOIN_TOKEN_KEPT_MS;
    created(new_join_token("later", "s-later", later, 1000, 1));
    let ids: Vec<String> = registry
        .join_tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["later"], "dead tokens were not deleted");
}

#[test]
fn memory_registry_keeps_join_tokens() {
    keeps_join_tokens(&MemoryRegistry::new());
}

#[test]
fn sqlite_registry_keeps_join_tokens_and_never_the_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SqliteRegistry::open(dir.path()).expect("open");
    keeps_join_tokens(&registry);
    // Kept across a restart; the file holds the digest, never the secret.
    registry
        .create_join_token(new_join_token(
            "kept",
            "cnjoin_kept_secret",
            10_000,
            1000,
            1,
        ))
        .expect("create");
    drop(registry);
    let reopened = SqliteRegistry::open(dir.path()).expect("reopen");
    let t = reopened.join_token(&digest("cnjoin_kept_secret")).unwrap();
    assert_eq!(t.map(|t| t.id), Some("kept".to_string()));
    let bytes = std::fs::read(dir.path().join(REGISTRY_FILE)).expect("read");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!has(b"cnjoin_kept_secret"), "the secret is in the file");
    assert!(has(&digest("cnjoin_kept_secret")), "the digest is not");
}

/// A registry made by the previous version (schema 1) is brought to
/// schema 2 in place: its devices stay, the new column is empty, the join
/// token table exists.
#[test]
fn a_version_1_registry_is_migrated_keeping_its_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(REGISTRY_FILE);
    {
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(schema::SCHEMA_V1).expect("v1");
        conn.execute(
            "INSERT INTO devices (device_id, first_seen_ms, last_seen_ms) VALUES ('old', 1, 2)",
            [],
        )
        .expect("device");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
    }
    let registry = SqliteRegistry::open(dir.path()).expect("migrate");
    let all = registry.devices().expect("devices");
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].device_id.as_str(), all[0].join_token_id.as_deref()),
        ("old", None)
    );
    assert!(registry.join_tokens().expect("tokens").is_empty());
    drop(registry);
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
}

/// The last use of a join token has one taker, however many new devices
/// enrol with it at once (decided in the writer's transaction).
#[test]
fn concurrent_enrolments_take_a_join_tokens_uses_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let registry = std::sync::Arc::new(SqliteRegistry::open(dir.path()).unwrap());
    registry
        .create_join_token(new_join_token("cccccccccccc", "cnjoin_c", 1, 1_000_000, 3))
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let checks = rt.block_on(async {
        let claims: Vec<_> = (0..32)
            .map(|i| {
                let key = format!("i-{i}");
                let claim = with_token(claim(&key, &format!("dev-{i}"), 2), "cccccccccccc");
                registry.claim(claim)
            })
            .collect();
        futures_util::future::join_all(claims).await
    });
    let new = checks
        .iter()
        .filter(|c| matches!(c, Ok(ClaimCheck::New)))
        .count();
    let refused = checks
        .iter()
        .filter(|c| matches!(c, Ok(ClaimCheck::JoinTokenRefused(_))))
        .count();
    assert_eq!((new, refused), (3, 29), "{checks:?}");
    let t = registry.join_token(&digest("cnjoin_c")).unwrap().unwrap();
    assert_eq!(t.used, 3);
    assert_eq!(registry.counts().unwrap().devices, 3);
}

/// Device tokens (issue 16, part 5), the same in every implementation:
/// stored as their SHA-256, one per device and role, matched in constant
/// time; rotation and revocation end the old token at once; a device's
/// removal takes its tokens.
fn keeps_device_tokens(registry: &dyn DeviceRegistry) {
    let issue = |id: &str, role: Role, token: &str, scopes: &[&str], now_ms: u64| {
        block(registry.change_token(TokenChange::Issue {
            device_id: id.to_string(),
            role,
            sha256: token_digest(token),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            now_ms,
        }))
        .expect("issue")
    };
    // No device, no token.
    assert_eq!(issue("a", Role::Node, "t-a", &[], 10), None);
    assert_eq!(registry.device_token("a", Role::Node).expect("read"), None);
    block(registry.claim(claim("i-1", "a", 10))).expect("claim");
    block(registry.claim(claim("i-2", "b", 10))).expect("claim");
    let a = issue("a", Role::Node, "t-a", &[], 20).expect("issued");
    assert_eq!((a.issued_at_ms, a.revoked_at_ms), (20, None));
    issue("b", Role::Node, "t-b", &[], 20).expect("issued");
    issue("b", Role::Operator, "t-b-op", &["operator.read"], 21).expect("issued");

    let stored = registry
        .device_token("a", Role::Node)
        .expect("read")
        .expect("a's token");
    assert!(stored.matches("t-a"));
    // Only the digest is kept.
    assert_eq!(stored.sha256, Some(token_digest("t-a")));
    // Another device's token, another role's, a near miss: no match.
    assert!(!stored.matches("t-b"));
    assert!(!stored.matches("t-a "));
    assert!(!stored.matches(""));
    assert_eq!(
        registry.device_token("a", Role::Operator).expect("read"),
        None
    );
    let op = registry
        .device_token("b", Role::Operator)
        .expect("read")
        .expect("b's operator token");
    assert!(op.matches("t-b-op") && !op.matches("t-b"));
    assert_eq!(op.scopes, vec!["operator.read".to_string()]);

    // A new issue replaces the token.
    issue("a", Role::Node, "t-a2", &[], 30).expect("issued");
    let a = registry
        .device_token("a", Role::Node)
        .expect("read")
        .expect("a");
    assert!(a.matches("t-a2") && !a.matches("t-a"));
    assert_eq!(a.issued_at_ms, 30);

    // Rotation without a replacement (withheld): nothing matches.
    let rotate = |sha256: Option<[u8; 32]>, scopes: Option<Vec<String>>, now_ms: u64| {
        block(registry.change_token(TokenChange::Rotate {
            device_id: "b".into(),
            role: Role::Operator,
            sha256,
            scopes,
            now_ms,
        }))
        .expect("rotate")
    };
    let rotated = rotate(None, None, 40).expect("rotated");
    assert_eq!((rotated.sha256, rotated.rotated_at_ms), (None, Some(40)));
    assert_eq!(rotated.scopes, vec!["operator.read".to_string()]);
    let b = registry
        .device_token("b", Role::Operator)
        .expect("read")
        .expect("b");
    assert!(!b.matches("t-b-op"));
    // In band: the replacement matches, with narrowed scopes.
    let rotated = rotate(Some(token_digest("t-b-op2")), Some(vec![]), 50).expect("rotated");
    assert!(rotated.matches("t-b-op2"));
    assert_eq!((rotated.issued_at_ms, rotated.scopes.len()), (50, 0));
    // Rotating or revoking a token never issued: nothing.
    let none = block(registry.change_token(TokenChange::Revoke {
        device_id: "a".into(),
        role: Role::Operator,
        now_ms: 55,
    }))
    .expect("revoke");
    assert_eq!(none, None);

    // Revocation: the node token of b stops matching; a's is untouched.
    let revoked = block(registry.change_token(TokenChange::Revoke {
        device_id: "b".into(),
        role: Role::Node,
        now_ms: 60,
    }))
    .expect("revoke")
    .expect("revoked");
    assert_eq!((revoked.sha256, revoked.revoked_at_ms), (None, Some(60)));
    assert!(!registry
        .device_token("b", Role::Node)
        .expect("read")
        .expect("b")
        .matches("t-b"));
    // The record lists the tokens by role, never the token.
    let all = registry.devices().expect("list");
    let b = all.iter().find(|r| r.device_id == "b").expect("b");
    let summary: Vec<_> = b
        .tokens
        .iter()
        .map(|t| (t.role.as_str(), t.active, t.revoked_at_ms, t.rotated_at_ms))
        .collect();
    assert_eq!(
        summary,
        [
            ("node", false, Some(60), None),
            ("operator", true, None, Some(50))
        ]
    );
    assert_eq!(b.tokens[1].created_at_ms, 50);
    let json = serde_json::to_string(b).expect("json");
    assert!(
        !json.contains("\"t-b") && !json.contains("t-b-op2"),
        "{json}"
    );
    // Issued again (the device's next connect): valid, revocation cleared.
    let again = issue("b", Role::Node, "t-b3", &[], 70).expect("issued");
    assert!(again.matches("t-b3"));
    assert_eq!(again.revoked_at_ms, None);

    // A removed device's tokens go with it.
    registry
        .change(Change::Remove {
            device_id: "a".into(),
        })
        .expect("remove");
    assert_eq!(registry.device_token("a", Role::Node).expect("read"), None);
}

#[test]
fn memory_registry_keeps_device_tokens() {
    keeps_device_tokens(&MemoryRegistry::new());
}

#[test]
fn sqlite_registry_keeps_device_tokens_hashed_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    keeps_device_tokens(&SqliteRegistry::open(dir.path()).expect("open"));
    let reopened = SqliteRegistry::open(dir.path()).expect("reopen");
    let b = reopened
        .device_token("b", Role::Node)
        .expect("read")
        .expect("b's token");
    assert!(b.matches("t-b3"));
    drop(reopened);
    // The file holds the digest, never the token.
    let conn = Connection::open(dir.path().join(REGISTRY_FILE)).expect("open");
    let stored: String = conn
        .query_row(
            "SELECT token_sha256 FROM device_tokens WHERE device_id = 'b' AND role = 'node'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    let hex: String = token_digest("t-b3")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored, hex);
    let bytes = std::fs::read(dir.path().join(REGISTRY_FILE)).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("t-b3") && !text.contains("t-b-op2"));
}

/// A registry made by the previous version (schema 1) is brought to
/// schema 2 on open: its devices and pins stay, device tokens work.
#[test]
fn a_schema_1_registry_is_migrated_to_device_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut conn = Connection::open(dir.path().join(REGISTRY_FILE)).expect("create");
        let tx = conn.transaction().expect("tx");
        tx.execute_batch(
            "CREATE TABLE devices (
                device_id TEXT PRIMARY KEY NOT NULL, public_key TEXT,
                state TEXT NOT NULL DEFAULT 'approved'
                    CHECK (state IN ('pending', 'approved', 'rejected', 'revoked')),
                roles TEXT NOT NULL DEFAULT '[]', display_name TEXT, label TEXT,
                first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
                last_address TEXT, approved_by TEXT, approved_at_ms INTEGER
            ) WITHOUT ROWID;
            CREATE TABLE instances (
                instance_id TEXT PRIMARY KEY NOT NULL,
                device_id TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
                display_name TEXT, claimed_at_ms INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE INDEX instances_by_device ON instances (device_id);
            CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
            INSERT INTO devices (device_id, public_key, roles, first_seen_ms, last_seen_ms)
                VALUES ('a', 'pk-a', '[\"node\"]', 1, 1);
            INSERT INTO instances VALUES ('i-1', 'a', NULL, 1);
            PRAGMA user_version = 1;",
        )
        .expect("schema 1");
        tx.commit().expect("commit");
    }
    let registry = SqliteRegistry::open(dir.path()).expect("migrated");
    assert_eq!(
        registry.pin("i-1").expect("pin").expect("kept").device_id,
        "a"
    );
    block(registry.change_token(TokenChange::Issue {
        device_id: "a".into(),
        role: Role::Node,
        sha256: token_digest("t"),
        scopes: vec![],
        now_ms: 5,
    }))
    .expect("issue")
    .expect("issued");
    assert!(registry
        .device_token("a", Role::Node)
        .expect("read")
        .expect("token")
        .matches("t"));
    drop(registry);
    let version: i64 = Connection::open(dir.path().join(REGISTRY_FILE))
        .expect("open")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, schema::SCHEMA_VERSION);
}

fn with_device_token(mut claim: Claim, token: &str, scopes: &[&str]) -> Claim {
    claim.token = Some(ClaimToken {
        role: claim.device.role.unwrap_or(Role::Node),
        sha256: token_digest(token),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    });
    claim
}

/// A device token issued with a claim (a new device's first connect), the
/// same in every implementation: stored with the admitted claim — the
/// device's record, its pin and its token, read back as soon as the claim
/// resolves (no flush) — and never with a refused one (a pinned key, a
/// used-up join token).
fn issues_device_tokens_with_claims(registry: &dyn DeviceRegistry) {
    let new = block(registry.claim(with_device_token(claim("i-1", "a", 10), "devtok-a", &[])));
    assert_eq!(new.expect("claim"), ClaimCheck::New);
    assert!(registry.is_known_device("a"));
    assert_eq!(
        registry
            .pin("i-1")
            .expect("pin")
            .expect("a's pin")
            .device_id,
        "a"
    );
    let a = registry
        .device_token("a", Role::Node)
        .expect("read")
        .expect("a's token stored with its claim");
    assert!(a.matches("devtok-a") && !a.matches("devtok-b"));
    assert_eq!(a.sha256, Some(token_digest("devtok-a")));
    assert_eq!((a.issued_at_ms, a.revoked_at_ms), (10, None));
    let record = registry.devices().expect("list");
    assert_eq!(record[0].tokens.len(), 1);
    assert!(record[0].tokens[0].active);

    // Refused: another key's pin. Neither a record nor a token.
    let taken = block(registry.claim(with_device_token(claim("i-1", "b", 20), "devtok-b", &[])));
    assert!(matches!(taken.expect("claim"), ClaimCheck::Conflict(_)));
    assert!(!registry.is_known_device("b"));
    assert_eq!(registry.device_token("b", Role::Node).expect("read"), None);

    // Refused: its join token has no use left. Neither, and the use stays.
    let created = registry
        .create_join_token(new_join_token("jjjjjjjjjjjj", "cnjoin_j", 0, 1000, 1))
        .expect("create");
    assert!(matches!(created, JoinTokenCreated::Created(_)));
    let c = with_token(claim("i-3", "c", 30), "jjjjjjjjjjjj");
    let c = block(registry.claim(with_device_token(c, "devtok-c", &[])));
    assert_eq!(c.expect("claim"), ClaimCheck::New);
    let d = with_token(claim("i-4", "d", 31), "jjjjjjjjjjjj");
    let d = block(registry.claim(with_device_token(d, "devtok-d", &[])));
    assert!(matches!(
        d.expect("claim"),
        ClaimCheck::JoinTokenRefused(Some(_))
    ));
    assert!(!registry.is_known_device("d"));
    assert_eq!(registry.device_token("d", Role::Node).expect("read"), None);
    let c = registry.device_token("c", Role::Node).expect("read");
    assert!(c.expect("c's token").matches("devtok-c"));

    // A known device's claim with a token (its key pinned to it already):
    // admitted, and the token replaces the one it had.
    let again = block(registry.claim(with_device_token(claim("i-1", "a", 40), "devtok-a2", &[])));
    assert_eq!(again.expect("claim"), ClaimCheck::Known);
    let a = registry
        .device_token("a", Role::Node)
        .expect("read")
        .expect("a");
    assert!(a.matches("devtok-a2") && !a.matches("devtok-a"));
    assert_eq!(a.issued_at_ms, 40);
    // An operator device's, with its scopes, for its role.
    let mut op = claim("e", "e", 50);
    op.device.role = Some(Role::Operator);
    let op = with_device_token(op, "devtok-e", &["operator.read"]);
    assert_eq!(block(registry.claim(op)).expect("claim"), ClaimCheck::New);
    let e = registry.device_token("e", Role::Operator).expect("read");
    let e = e.expect("e's operator token");
    assert!(e.matches("devtok-e"));
    assert_eq!(e.scopes, vec!["operator.read".to_string()]);
    assert_eq!(registry.device_token("e", Role::Node).expect("read"), None);
    // A claim without one leaves the token as it is.
    let plain = block(registry.claim(claim("i-1", "a", 60)));
    assert_eq!(plain.expect("claim"), ClaimCheck::Known);
    let a = registry
        .device_token("a", Role::Node)
        .expect("read")
        .expect("a");
    assert!(a.matches("devtok-a2"));
}

#[test]
fn memory_registry_issues_device_tokens_with_claims() {
    issues_device_tokens_with_claims(&MemoryRegistry::new());
}

#[test]
fn sqlite_registry_issues_device_tokens_with_claims_kept_hashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = SqliteRegistry::open(dir.path()).expect("open");
    issues_device_tokens_with_claims(&registry);
    // Stored: a restart keeps them; the file holds the digest only.
    drop(registry);
    let reopened = SqliteRegistry::open(dir.path()).expect("reopen");
    let a = reopened.device_token("a", Role::Node).expect("read");
    assert!(a.expect("a's token").matches("devtok-a2"));
    assert_eq!(reopened.device_token("d", Role::Node).expect("read"), None);
    drop(reopened);
    let bytes = std::fs::read(dir.path().join(REGISTRY_FILE)).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("devtok-a2") && !text.contains("devtok-e"));
}
