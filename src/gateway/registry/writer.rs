//! The registry's writer thread: owns the writing connection and stores
//! whatever queued up while it was busy as one transaction, then answers
//! each job once that transaction is committed.

use std::sync::mpsc;

use anyhow::{anyhow, Result};
use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::join_token_queries::select_join_token;
use super::queries::{select_first_seen, select_pin, select_record, select_token, to_hex};
use super::{
    decide, Change, Claim, ClaimCheck, Decision, Device, DeviceRecord, DeviceState, Found,
    JoinToken, JoinTokenCreated, NewJoinToken, Pin, TokenChange, TokenRecord, JOIN_TOKEN_KEPT_MS,
};
use crate::protocol::join_token::MAX_LIVE;
use crate::protocol::Role;

/// At most this many jobs in one transaction.
const MAX_BATCH: usize = 4096;

/// Work for the writer, in the order it was queued.
pub enum Job {
    /// A claim the reader could not decide (a first claim).
    Claim(Claim, oneshot::Sender<Result<ClaimCheck>>),
    /// A device seen again: public key, role, address, last-seen time.
    Seen(Device, u64),
    Forget(String, mpsc::SyncSender<Result<Option<Pin>>>),
    /// An operator's change to a device record.
    Change(Change, mpsc::SyncSender<Result<Option<DeviceRecord>>>),
    /// A new join token (unless too many are live).
    CreateJoinToken(NewJoinToken, mpsc::SyncSender<Result<JoinTokenCreated>>),
    /// A join token revoked at this time.
    RevokeJoinToken(String, u64, mpsc::SyncSender<Result<Option<JoinToken>>>),
    /// A join token let a connection in at this time.
    JoinTokenUsed(String, u64),
    /// A device token issued, rotated or revoked.
    Token(TokenChange, oneshot::Sender<Result<Option<TokenRecord>>>),
    /// Answered once everything queued before it is stored.
    Flush(mpsc::SyncSender<Result<()>>),
    /// Stores what is queued before it, then ends the thread.
    Stop,
}

/// An answer to send once the transaction is committed (or failed).
enum Reply {
    Claim(oneshot::Sender<Result<ClaimCheck>>, Result<ClaimCheck>),
    Forget(mpsc::SyncSender<Result<Option<Pin>>>, Result<Option<Pin>>),
    Change(
        mpsc::SyncSender<Result<Option<DeviceRecord>>>,
        Result<Option<DeviceRecord>>,
    ),
    Flush(mpsc::SyncSender<Result<()>>, Result<()>),
    Created(
        mpsc::SyncSender<Result<JoinTokenCreated>>,
        Result<JoinTokenCreated>,
    ),
    Revoked(
        mpsc::SyncSender<Result<Option<JoinToken>>>,
        Result<Option<JoinToken>>,
    ),
    Token(
        oneshot::Sender<Result<Option<TokenRecord>>>,
        Result<Option<TokenRecord>>,
    ),
}

impl Reply {
    /// The reply to `job` when its transaction failed with `why`; `None`
    /// for jobs nobody waits for.
    fn failed(job: Job, why: &str) -> Option<Reply> {
        let e = || anyhow!("device registry: {why}");
        match job {
            Job::Claim(_, tx) => Some(Reply::Claim(tx, Err(e()))),
            Job::Forget(_, tx) => Some(Reply::Forget(tx, Err(e()))),
            Job::Change(_, tx) => Some(Reply::Change(tx, Err(e()))),
            Job::Flush(tx) => Some(Reply::Flush(tx, Err(e()))),
            Job::CreateJoinToken(_, tx) => Some(Reply::Created(tx, Err(e()))),
            Job::RevokeJoinToken(_, _, tx) => Some(Reply::Revoked(tx, Err(e()))),
            Job::Token(_, tx) => Some(Reply::Token(tx, Err(e()))),
            Job::Seen(..) | Job::JoinTokenUsed(..) | Job::Stop => None,
        }
    }

    fn send(self) {
        // A receiver that gave up (its handshake timed out) is no error.
        match self {
            Reply::Claim(tx, result) => drop(tx.send(result)),
            Reply::Forget(tx, result) => drop(tx.send(result)),
            Reply::Change(tx, result) => drop(tx.send(result)),
            Reply::Flush(tx, result) => drop(tx.send(result)),
            Reply::Created(tx, result) => drop(tx.send(result)),
            Reply::Revoked(tx, result) => drop(tx.send(result)),
            Reply::Token(tx, result) => drop(tx.send(result)),
        }
    }
}

/// The thread's body: until [`Job::Stop`] or every sender is gone.
pub fn run(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let stop = batch.iter().any(|j| matches!(j, Job::Stop));
        for reply in store(&mut conn, batch) {
            reply.send();
        }
        if stop {
            break;
        }
    }
    // Leave the database as one file (a checkpoint) when stopping cleanly.
    if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        debug!(error = %e, "registry checkpoint on stop failed");
    }
}

/// Applies `batch` in one transaction: all of it or, on any failure, none
/// (every job waiting for an answer is then told why). The replies to send.
fn store(conn: &mut Connection, batch: Vec<Job>) -> Vec<Reply> {
    let why = match apply_all(conn, &batch) {
        Ok(replies) => {
            return replies
                .into_iter()
                .zip(batch)
                .filter_map(|(r, job)| r.reply(job))
                .collect()
        }
        Err(e) => format!("{e:#}"),
    };
    warn!(error = %why, jobs = batch.len(), "cannot store in the device registry");
    batch
        .into_iter()
        .filter_map(|job| Reply::failed(job, &why))
        .collect()
}

/// What one job came to, before its transaction is committed.
enum Outcome {
    Claim(ClaimCheck),
    Forget(Option<Pin>),
    Change(Option<DeviceRecord>),
    Created(JoinTokenCreated),
    Revoked(Option<JoinToken>),
    Token(Option<TokenRecord>),
    Done,
}

impl Outcome {
    fn reply(self, job: Job) -> Option<Reply> {
        match (self, job) {
            (Outcome::Claim(check), Job::Claim(_, tx)) => Some(Reply::Claim(tx, Ok(check))),
            (Outcome::Forget(pin), Job::Forget(_, tx)) => Some(Reply::Forget(tx, Ok(pin))),
            (Outcome::Change(record), Job::Change(_, tx)) => Some(Reply::Change(tx, Ok(record))),
            (Outcome::Created(c), Job::CreateJoinToken(_, tx)) => Some(Reply::Created(tx, Ok(c))),
            (Outcome::Revoked(t), Job::RevokeJoinToken(_, _, tx)) => {
                Some(Reply::Revoked(tx, Ok(t)))
            }
            (Outcome::Token(record), Job::Token(_, tx)) => Some(Reply::Token(tx, Ok(record))),
            (_, Job::Flush(tx)) => Some(Reply::Flush(tx, Ok(()))),
            _ => None,
        }
    }
}

/// Applies every job and commits; the outcomes in job order.
fn apply_all(conn: &mut Connection, batch: &[Job]) -> Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        outcomes.push(match job {
            Job::Claim(claim, _) => Outcome::Claim(apply_claim(&tx, claim)?),
            Job::Seen(device, now_ms) => {
                upsert_device(&tx, device, *now_ms)?;
                Outcome::Done
            }
            Job::Forget(key, _) => Outcome::Forget(apply_forget(&tx, key)?),
            Job::Change(change, _) => Outcome::Change(apply_change(&tx, change)?),
            Job::CreateJoinToken(new, _) => Outcome::Created(create_join_token(&tx, new)?),
            Job::RevokeJoinToken(id, now_ms, _) => {
                Outcome::Revoked(revoke_join_token(&tx, id, *now_ms)?)
            }
            Job::JoinTokenUsed(id, now_ms) => {
                tx.prepare_cached(
                    "UPDATE join_tokens SET last_used_ms = max(coalesce(last_used_ms, 0), ?2)
                     WHERE id = ?1",
                )?
                .execute(params![id, *now_ms as i64])?;
                Outcome::Done
            }
            Job::Token(change, _) => Outcome::Token(apply_token(&tx, change)?),
            Job::Flush(_) | Job::Stop => Outcome::Done,
        });
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Decides a claim against the transaction's view and stores the outcome:
/// an admitted device's record, its pin, and the device token issued with
/// the claim ([`Claim::token`]).
fn apply_claim(tx: &Transaction<'_>, claim: &Claim) -> Result<ClaimCheck> {
    let device = &claim.device;
    let pin = select_pin(tx, &claim.key)?;
    let device_with_key_as_id = match pin {
        None if claim.key != device.id => select_first_seen(tx, &claim.key)?,
        _ => None,
    };
    let found = Found {
        pin,
        device_with_key_as_id,
    };
    let known = select_first_seen(tx, &device.id)?.is_some();
    let decision = decide(claim, &found);
    let check = match &decision {
        Decision::Keep(conflict @ ClaimCheck::Conflict(_)) => return Ok(conflict.clone()),
        Decision::Keep(check) => check.clone(),
        Decision::OwnId if known => ClaimCheck::Known,
        Decision::OwnId | Decision::PinToClaimant => ClaimCheck::New,
    };
    // A new device enrolling with a created join token takes one of its
    // uses, decided here so that two at once cannot both take the last.
    if let (false, Some(id)) = (known, &device.join_token) {
        if !take_join_token_use(tx, id, claim.now_ms)? {
            let token = select_join_token(tx, id)?;
            return Ok(ClaimCheck::JoinTokenRefused(token.map(Box::new)));
        }
    }
    upsert_device(tx, device, claim.now_ms)?;
    if decision == Decision::PinToClaimant {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO instances (instance_id, device_id, display_name, claimed_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            claim.key,
            device.id,
            device.display_name,
            claim.now_ms as i64
        ])?;
    }
    // Its device token, issued with the claim: in this same commit.
    if let Some(t) = &claim.token {
        issue_token(tx, &device.id, t.role, &t.sha256, &t.scopes, claim.now_ms)?;
    }
    Ok(check)
}

/// Records `device` as seen now: its key, role, address and host name.
fn upsert_device(tx: &Transaction<'_>, device: &Device, now_ms: u64) -> Result<()> {
    let address = device.address.map(|a| a.to_string());
    tx.prepare_cached(
        "INSERT INTO devices (device_id, public_key, roles, display_name,
                              first_seen_ms, last_seen_ms, last_address, join_token_id)
         VALUES (?1, ?2, CASE WHEN ?3 IS NULL THEN '[]' ELSE json_array(?3) END, ?4, ?5, ?5, ?6,
                 ?7)
         ON CONFLICT (device_id) DO UPDATE SET
            public_key = excluded.public_key,
            roles = CASE
                WHEN ?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(roles) WHERE value = ?3)
                THEN roles
                ELSE json_insert(roles, '$[#]', ?3) END,
            display_name = coalesce(excluded.display_name, display_name),
            last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
            last_address = coalesce(excluded.last_address, last_address)",
    )?
    .execute(params![
        device.id,
        device.public_key,
        device.role.map(Role::as_str),
        device.display_name,
        now_ms as i64,
        address,
        device.join_token,
    ])?;
    Ok(())
}

/// Takes one use of join token `id` for a new device at `now_ms`, if it is
/// live and has one left; whether it did.
fn take_join_token_use(tx: &Transaction<'_>, id: &str, now_ms: u64) -> Result<bool> {
    let taken = tx
        .prepare_cached(
            "UPDATE join_tokens SET used = used + 1,
                last_used_ms = max(coalesce(last_used_ms, 0), ?2)
             WHERE id = ?1 AND revoked_at_ms IS NULL AND expires_at_ms > ?2 AND used < uses",
        )?
        .execute(params![id, now_ms as i64])?;
    Ok(taken == 1)
}

/// Stores a new join token unless [`MAX_LIVE`] are live; deletes those
/// dead for [`JOIN_TOKEN_KEPT_MS`].
fn create_join_token(tx: &Transaction<'_>, new: &NewJoinToken) -> Result<JoinTokenCreated> {
    let t = &new.token;
    let now = t.created_at_ms;
    tx.execute(
        "DELETE FROM join_tokens
         WHERE min(coalesce(revoked_at_ms, expires_at_ms), expires_at_ms) <= ?1",
        [now.saturating_sub(JOIN_TOKEN_KEPT_MS) as i64],
    )?;
    let live: i64 = tx.query_row(
        "SELECT count(*) FROM join_tokens WHERE revoked_at_ms IS NULL AND expires_at_ms > ?1",
        [now as i64],
        |r| r.get(0),
    )?;
    if live as usize >= MAX_LIVE {
        return Ok(JoinTokenCreated::TooMany(live as usize));
    }
    tx.execute(
        "INSERT INTO join_tokens (id, token_sha256, description, created_at_ms, created_by,
                                  expires_at_ms, uses, used)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
        params![
            t.id,
            &new.sha256[..],
            t.description,
            now as i64,
            t.created_by,
            t.expires_at_ms as i64,
            t.uses as i64,
        ],
    )?;
    Ok(JoinTokenCreated::Created(t.clone()))
}

fn revoke_join_token(tx: &Transaction<'_>, id: &str, now_ms: u64) -> Result<Option<JoinToken>> {
    tx.execute(
        "UPDATE join_tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
        params![id, now_ms as i64],
    )?;
    select_join_token(tx, id)
}

fn apply_forget(tx: &Transaction<'_>, key: &str) -> Result<Option<Pin>> {
    let pin = select_pin(tx, key)?;
    if pin.is_some() {
        tx.execute("DELETE FROM instances WHERE instance_id = ?1", [key])?;
    }
    Ok(pin)
}

/// Applies an operator's change (see [`Change`]).
fn apply_change(tx: &Transaction<'_>, change: &Change) -> Result<Option<DeviceRecord>> {
    match change {
        Change::SetState {
            device_id,
            state,
            by,
            device,
            now_ms,
        } => {
            if select_first_seen(tx, device_id)?.is_none() {
                match device {
                    Some(device) if device.id == *device_id => {
                        upsert_device(tx, device, *now_ms)?;
                        // An operator's approval of a request made with a
                        // join token counts as its use, uses left or not.
                        if let Some(id) = &device.join_token {
                            tx.execute(
                                "UPDATE join_tokens SET used = used + 1 WHERE id = ?1",
                                [id],
                            )?;
                        }
                    }
                    _ => return Ok(None),
                }
            }
            let approved = *state == DeviceState::Approved;
            tx.execute(
                "UPDATE devices SET state = ?2,
                    approved_by = CASE WHEN ?3 THEN ?4 ELSE approved_by END,
                    approved_at_ms = CASE WHEN ?3 THEN ?5 ELSE approved_at_ms END
                 WHERE device_id = ?1",
                params![device_id, state.as_str(), approved, by, *now_ms as i64],
            )?;
            select_record(tx, device_id)
        }
        Change::Label { device_id, label } => {
            tx.execute(
                "UPDATE devices SET label = ?2 WHERE device_id = ?1",
                params![device_id, label],
            )?;
            select_record(tx, device_id)
        }
        Change::Remove { device_id } => {
            let record = select_record(tx, device_id)?;
            if record.is_some() {
                tx.execute("DELETE FROM devices WHERE device_id = ?1", [device_id])?;
            }
            Ok(record)
        }
    }
}

/// Stores a new device token (its SHA-256) for a known device and role,
/// replacing any ([`TokenChange::Issue`]).
fn issue_token(
    tx: &Transaction<'_>,
    device_id: &str,
    role: Role,
    sha256: &[u8; 32],
    scopes: &[String],
    now_ms: u64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO device_tokens (device_id, role, token_sha256, scopes, issued_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device_id, role) DO UPDATE SET
            token_sha256 = excluded.token_sha256,
            scopes = excluded.scopes,
            issued_at_ms = excluded.issued_at_ms,
            revoked_at_ms = NULL",
    )?
    .execute(params![
        device_id,
        role.as_str(),
        to_hex(sha256),
        serde_json::to_string(scopes)?,
        now_ms as i64,
    ])?;
    Ok(())
}

/// Applies a device token change (see [`TokenChange`]).
fn apply_token(tx: &Transaction<'_>, change: &TokenChange) -> Result<Option<TokenRecord>> {
    let (device_id, role) = match change {
        TokenChange::Issue {
            device_id,
            role,
            sha256,
            scopes,
            now_ms,
        } => {
            if select_first_seen(tx, device_id)?.is_none() {
                return Ok(None);
            }
            issue_token(tx, device_id, *role, sha256, scopes, *now_ms)?;
            (device_id, *role)
        }
        TokenChange::Rotate {
            device_id,
            role,
            sha256,
            scopes,
            now_ms,
        } => {
            let scopes = scopes.as_ref().map(serde_json::to_string).transpose()?;
            let changed = tx.execute(
                "UPDATE device_tokens SET
                    token_sha256 = ?3,
                    scopes = coalesce(?4, scopes),
                    rotated_at_ms = ?5,
                    issued_at_ms = CASE WHEN ?3 IS NULL THEN issued_at_ms ELSE ?5 END,
                    revoked_at_ms = CASE WHEN ?3 IS NULL THEN revoked_at_ms ELSE NULL END
                 WHERE device_id = ?1 AND role = ?2",
                params![
                    device_id,
                    role.as_str(),
                    sha256.as_ref().map(to_hex),
                    scopes,
                    *now_ms as i64,
                ],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            (device_id, *role)
        }
        TokenChange::Revoke {
            device_id,
            role,
            now_ms,
        } => {
            let changed = tx.execute(
                "UPDATE device_tokens SET token_sha256 = NULL, revoked_at_ms = ?3
                 WHERE device_id = ?1 AND role = ?2",
                params![device_id, role.as_str(), *now_ms as i64],
            )?;
            if changed == 0 {
                return Ok(None);
            }
            (device_id, *role)
        }
    };
    select_token(tx, device_id, role)
}
