//! The registry in an embedded SQLite database, `<state-dir>/registry.sqlite`
//! (mode 0600; SQLite gives its `-wal` and `-shm` files the same mode and
//! owner). WAL journal with `synchronous = NORMAL`: a commit survives the
//! process being killed (SIGKILL) at any point; a power loss may take the
//! last commits back, never corrupt the file.
//!
//! Two connections: the handshake path reads through one (one indexed
//! query, O(log n), its statement prepared once; never waiting for a
//! write: WAL readers see the last commit);
//! every write goes to a writer thread that owns the other and commits
//! whatever queued up meanwhile as one transaction (a burst of first
//! connections is one commit). A new pin is decided again inside that
//! transaction (first claim wins) and answered after its commit, so a
//! handshake's `hello-ok` never announces a pin that is not stored; a new
//! device's first device token is stored in that same transaction (one
//! commit, one wait, for its record, pin and token).

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures_util::future::BoxFuture;
use rusqlite::{params, Connection, OptionalExtension as _};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::join_token_queries::{join_token_of_row, SELECT_JOIN_TOKEN};
use super::queries::{record_of_row, select_first_seen, select_pin, select_token, SELECT_RECORD};
use super::writer::{self, Job};
use super::{decide, pins_file, schema};
use super::{
    Change, Claim, ClaimCheck, Counts, Decision, DeviceRecord, DeviceRegistry, DeviceState, Found,
    JoinToken, JoinTokenCreated, NewJoinToken, Pin, TokenChange, TokenRecord,
    JOIN_TOKEN_USED_EVERY_MS,
};
use crate::protocol::Role;

/// The file name in the gateway's state directory.
pub const REGISTRY_FILE: &str = "registry.sqlite";
/// A device's last-seen time and address are stored at most this often
/// (a reconnecting fleet is not a write per handshake).
const SEEN_EVERY_MS: u64 = 60_000;
/// How long a connection waits for the other's lock on the file (another
/// process: `clawnode forget` while the gateway starts).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module docs.
pub struct SqliteRegistry {
    path: PathBuf,
    reader: Mutex<Connection>,
    jobs: mpsc::Sender<Job>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// When each join token's last use was last sent to be stored (at
    /// most one write a minute per token, however many connect).
    join_token_used: Mutex<std::collections::HashMap<String, u64>>,
}

impl std::fmt::Debug for SqliteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRegistry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteRegistry {
    /// Opens (creating it 0600 if absent) the registry in `state_dir`,
    /// brings its schema up to date and imports an earlier version's
    /// `pins.json` — every pin in one transaction — then renames that file
    /// `pins.json.migrated`. A damaged database or pins file is an error
    /// naming the file.
    pub fn open(state_dir: &Path) -> Result<SqliteRegistry> {
        let path = state_dir.join(REGISTRY_FILE);
        let damaged = |e: anyhow::Error| {
            anyhow!(
                "cannot open the device registry {}: {e:#}; restore it from a backup, or move it \
                 away to start with an empty registry (every instance id is then pinned again by \
                 the next key that claims it)",
                path.display()
            )
        };
        create_private(&path, state_dir)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut conn = connect(&path).map_err(damaged)?;
        schema::migrate(&mut conn).map_err(damaged)?;
        import_pins_file(&mut conn, state_dir)?;
        let reader = connect(&path).map_err(damaged)?;
        reader.pragma_update(None, "query_only", true)?;
        let (jobs, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || writer::run(conn, rx))
            .context("cannot start the registry writer thread")?;
        Ok(SqliteRegistry {
            path,
            reader: Mutex::new(reader),
            jobs,
            writer: Mutex::new(Some(writer)),
            join_token_used: Mutex::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        // A read holds no half-made change: a poisoned lock is usable.
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| anyhow!("the device registry writer has stopped"))
    }

    /// The claim decided from the last commit, when that needs no write:
    /// a known key (its own device's, or another's: refused). `None`: ask
    /// the writer (also for an admitted claim with a device token to
    /// store). One indexed query.
    fn decide_from_reader(&self, claim: &Claim) -> Result<Option<ClaimCheck>> {
        let (found, freshness) = reader_view(&self.read(), claim)?;
        let check = match decide(claim, &found) {
            Decision::Keep(conflict @ ClaimCheck::Conflict(_)) => return Ok(Some(conflict)),
            _ if claim.token.is_some() => return Ok(None),
            Decision::Keep(check) => check,
            Decision::OwnId => ClaimCheck::Known,
            Decision::PinToClaimant => return Ok(None),
        };
        // Admitted: the device's record must exist, and be fresh enough.
        match freshness {
            None => Ok(None),
            Some(Freshness::Fresh) => Ok(Some(check)),
            Some(Freshness::Stale) => {
                // Best effort: a lost update is only a late last-seen time.
                let _ = self.send(Job::Seen(claim.device.clone(), claim.now_ms));
                Ok(Some(check))
            }
        }
    }

    /// Waits for the writer to stop (after everything queued is stored).
    fn stop_writer(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = self.jobs.send(Job::Stop);
            if handle.join().is_err() {
                warn!("the device registry writer panicked");
            }
        }
    }
}

impl Drop for SqliteRegistry {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

impl DeviceRegistry for SqliteRegistry {
    fn claim(&self, claim: Claim) -> BoxFuture<'static, Result<ClaimCheck>> {
        let decided = self.decide_from_reader(&claim);
        let (tx, rx) = oneshot::channel();
        let queued = match decided {
            Ok(Some(check)) => return Box::pin(async move { Ok(check) }),
            Ok(None) => self.send(Job::Claim(claim, tx)),
            Err(e) => Err(e),
        };
        Box::pin(async move {
            queued?;
            rx.await
                .map_err(|_| anyhow!("the device registry writer has stopped"))?
        })
    }

    fn forget(&self, key: &str) -> Result<Option<Pin>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Forget(key.to_string(), tx))?;
        rx.recv()
            .map_err(|_| anyhow!("the device registry writer has stopped"))?
    }

    fn pin(&self, key: &str) -> Result<Option<Pin>> {
        select_pin(&self.read(), key)
    }

    fn is_known_device(&self, device_id: &str) -> bool {
        match select_first_seen(&self.read(), device_id) {
            Ok(found) => found.is_some(),
            Err(e) => {
                warn!(error = %e, "cannot read the device registry");
                false
            }
        }
    }

    fn counts(&self) -> Result<Counts> {
        let conn = self.read();
        let count = |table: &str| -> Result<u64> {
            let n: i64 =
                conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            Ok(n as u64)
        };
        let by_state = |state: DeviceState| -> Result<u64> {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM devices WHERE state = ?1",
                [state.as_str()],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        };
        Ok(Counts {
            devices: count("devices")?,
            pins: count("instances")?,
            approved: by_state(DeviceState::Approved)?,
            rejected: by_state(DeviceState::Rejected)?,
            revoked: by_state(DeviceState::Revoked)?,
        })
    }

    fn flush(&self) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Flush(tx))?;
        rx.recv()
            .map_err(|_| anyhow!("the device registry writer has stopped"))?
    }

    fn device_state(&self, device_id: &str) -> Result<Option<DeviceState>> {
        let state: Option<String> = self
            .read()
            .prepare_cached("SELECT state FROM devices WHERE device_id = ?1")?
            .query_row([device_id], |r| r.get(0))
            .optional()?;
        Ok(state.and_then(|s| DeviceState::parse(&s)))
    }

    fn change(&self, change: Change) -> Result<Option<DeviceRecord>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::Change(change, tx))?;
        rx.recv()
            .map_err(|_| anyhow!("the device registry writer has stopped"))?
    }

    fn labels(&self) -> Result<std::collections::HashMap<String, String>> {
        let conn = self.read();
        let mut statement =
            conn.prepare("SELECT device_id, label FROM devices WHERE label IS NOT NULL")?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>().map_err(Into::into)
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let conn = self.read();
        let mut statement = conn.prepare_cached(&format!(
            "{SELECT_RECORD} ORDER BY d.first_seen_ms, d.device_id"
        ))?;
        let rows = statement.query_map([], record_of_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    fn join_token(&self, sha256: &[u8; 32]) -> Result<Option<JoinToken>> {
        let token = self
            .read()
            .prepare_cached(&format!("{SELECT_JOIN_TOKEN} WHERE token_sha256 = ?1"))?
            .query_row([&sha256[..]], join_token_of_row)
            .optional()?;
        Ok(token)
    }

    fn create_join_token(&self, new: NewJoinToken) -> Result<JoinTokenCreated> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::CreateJoinToken(new, tx))?;
        rx.recv()
            .map_err(|_| anyhow!("the device registry writer has stopped"))?
    }

    fn join_tokens(&self) -> Result<Vec<JoinToken>> {
        let conn = self.read();
        let mut statement = conn.prepare_cached(&format!(
            "{SELECT_JOIN_TOKEN} ORDER BY created_at_ms DESC, id"
        ))?;
        let rows = statement.query_map([], join_token_of_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(Into::into)
    }

    fn revoke_join_token(&self, id: &str, now_ms: u64) -> Result<Option<JoinToken>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Job::RevokeJoinToken(id.to_string(), now_ms, tx))?;
        rx.recv()
            .map_err(|_| anyhow!("the device registry writer has stopped"))?
    }

    fn join_token_used(&self, id: &str, now_ms: u64) {
        {
            let mut stored = self
                .join_token_used
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match stored.get(id) {
                Some(&at) if now_ms.saturating_sub(at) < JOIN_TOKEN_USED_EVERY_MS => return,
                _ => stored.insert(id.to_string(), now_ms),
            };
        }
        // Best effort: a lost update is only a late `last used` time.
        let _ = self.send(Job::JoinTokenUsed(id.to_string(), now_ms));
    }

    fn device_token(&self, device_id: &str, role: Role) -> Result<Option<TokenRecord>> {
        select_token(&self.read(), device_id, role)
    }

    fn change_token(&self, change: TokenChange) -> BoxFuture<'static, Result<Option<TokenRecord>>> {
        let (tx, rx) = oneshot::channel();
        let queued = self.send(Job::Token(change, tx));
        Box::pin(async move {
            queued?;
            rx.await
                .map_err(|_| anyhow!("the device registry writer has stopped"))?
        })
    }
}

/// Creates `path` empty with mode 0600 if it does not exist. When root
/// creates it (`clawnode forget` with the gateway stopped), it is given to
/// the state directory's owner, the service user.
fn create_private(path: &Path, state_dir: &Path) -> std::io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if rustix::process::geteuid().is_root() {
        let dir = std::fs::metadata(state_dir)?;
        std::os::unix::fs::chown(path, Some(dir.uid()), Some(dir.gid()))?;
    }
    Ok(())
}

/// A connection with the registry's settings.
fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        anyhow::bail!("cannot switch to the WAL journal (still {mode})");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Imports `<state-dir>/pins.json` once, then renames it. The import is one
/// transaction: on any failure nothing is imported and the file stays.
fn import_pins_file(conn: &mut Connection, state_dir: &Path) -> Result<()> {
    let legacy_path = state_dir.join(pins_file::PINS_FILE);
    let Some(legacy) = pins_file::read(&legacy_path)? else {
        return Ok(());
    };
    if !schema::imported(conn, &legacy.digest)? {
        let added = schema::import_pins(conn, &legacy)
            .with_context(|| format!("cannot import {}", legacy_path.display()))?;
        info!(
            file = %legacy_path.display(),
            pins = legacy.pins.len(),
            added,
            "instance pins imported into the device registry"
        );
    }
    let migrated = state_dir.join(pins_file::PINS_FILE_MIGRATED);
    if let Err(e) = std::fs::rename(&legacy_path, &migrated) {
        // Harmless: the import is recorded, the next start renames it.
        warn!(error = %e, file = %legacy_path.display(), "cannot rename the imported pins file");
    }
    Ok(())
}

enum Freshness {
    Fresh,
    /// Its public key, role, address or last-seen time is out of date.
    Stale,
}

/// What a claim needs to know, in one query: the key's pin, whether the
/// key is the id of a known device (when it is not the claimant's own), and
/// how fresh the claiming device's record is (`None`: it has none).
fn reader_view(conn: &Connection, claim: &Claim) -> Result<(Found, Option<Freshness>)> {
    let device = &claim.device;
    let address = device.address.map(|a| a.to_string());
    let mut statement = conn.prepare_cached(
        "SELECT i.device_id, i.claimed_at_ms, i.display_name,
                k.first_seen_ms, k.display_name,
                (SELECT public_key IS ?3
                        AND last_seen_ms >= ?4
                        AND last_address IS ?5
                        AND (?6 IS NULL OR instr(roles, '\"' || ?6 || '\"') > 0)
                   FROM devices WHERE device_id = ?2)
         FROM (SELECT 1)
         LEFT JOIN instances i ON i.instance_id = ?1
         LEFT JOIN devices k ON k.device_id = ?1 AND ?1 != ?2",
    )?;
    let row = statement.query_row(
        params![
            claim.key,
            device.id,
            device.public_key,
            claim.now_ms.saturating_sub(SEEN_EVERY_MS) as i64,
            address,
            device.role.map(Role::as_str),
        ],
        |r| {
            let pin = match r.get::<_, Option<String>>(0)? {
                Some(device_id) => Some(Pin {
                    device_id,
                    pinned_at_ms: r.get::<_, i64>(1)? as u64,
                    display_name: r.get(2)?,
                }),
                None => None,
            };
            let device_with_key_as_id = match r.get::<_, Option<i64>>(3)? {
                Some(first_seen) => Some((first_seen as u64, r.get(4)?)),
                None => None,
            };
            let fresh: Option<bool> = r.get(5)?;
            Ok((pin, device_with_key_as_id, fresh))
        },
    )?;
    let (pin, device_with_key_as_id, fresh) = row;
    let found = Found {
        pin,
        device_with_key_as_id,
    };
    Ok((
        found,
        fresh.map(|f| {
            if f {
                Freshness::Fresh
            } else {
                Freshness::Stale
            }
        }),
    ))
}
