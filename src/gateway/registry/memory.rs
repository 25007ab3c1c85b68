//! The registry in memory: for gateways embedded without a state directory
//! (tests, benches, fuzzing). Same rule ([`super::decide`]), nothing kept.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use anyhow::Result;
use futures_util::future::BoxFuture;

use super::{
    decide, Change, Claim, ClaimCheck, Counts, Decision, Device, DeviceRecord, DeviceRegistry,
    DeviceState, Found, JoinToken, JoinTokenCreated, NewJoinToken, Pin, TokenChange, TokenRecord,
    TokenSummary, JOIN_TOKEN_KEPT_MS,
};
use crate::protocol::join_token::{JoinTokenState, MAX_LIVE};
use crate::protocol::Role;

/// Device records and pins, under one lock.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    devices: HashMap<String, DeviceRecord>,
    pins: HashMap<String, Pin>,
    /// Join tokens by id, and their ids by the SHA-256 of the secret.
    join_tokens: HashMap<String, JoinToken>,
    join_token_ids: HashMap<[u8; 32], String>,
    /// Keyed by device id and role; gone with their device.
    tokens: HashMap<(String, Role), TokenRecord>,
}

impl State {
    /// Records `device` as seen now (a new record is approved).
    fn seen(&mut self, device: &Device, now_ms: u64) {
        let record = self
            .devices
            .entry(device.id.clone())
            .or_insert_with(|| DeviceRecord {
                device_id: device.id.clone(),
                public_key: None,
                state: DeviceState::Approved,
                roles: Vec::new(),
                display_name: None,
                label: None,
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                last_address: None,
                approved_by: None,
                approved_at_ms: None,
                instance_ids: Vec::new(),
                join_token_id: device.join_token.clone(),
                tokens: Vec::new(),
            });
        record.public_key = Some(device.public_key.clone());
        if let Some(role) = device.role {
            if !record.roles.iter().any(|r| r == role.as_str()) {
                record.roles.push(role.as_str().to_string());
            }
        }
        if device.display_name.is_some() {
            record.display_name = device.display_name.clone();
        }
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        if let Some(address) = device.address {
            record.last_address = Some(address.to_string());
        }
    }

    /// Stores a new device token for a known device and role, replacing
    /// any ([`TokenChange::Issue`]); `None`: no such device.
    fn issue_token(
        &mut self,
        device_id: &str,
        role: Role,
        sha256: [u8; 32],
        scopes: &[String],
        now_ms: u64,
    ) -> Option<TokenRecord> {
        if !self.devices.contains_key(device_id) {
            return None;
        }
        let key = (device_id.to_string(), role);
        let rotated_at_ms = self.tokens.get(&key).and_then(|t| t.rotated_at_ms);
        let record = TokenRecord {
            device_id: device_id.to_string(),
            role,
            sha256: Some(sha256),
            scopes: scopes.to_vec(),
            issued_at_ms: now_ms,
            rotated_at_ms,
            revoked_at_ms: None,
        };
        self.tokens.insert(key, record.clone());
        Some(record)
    }

    fn record(&self, device_id: &str) -> Option<DeviceRecord> {
        let mut record = self.devices.get(device_id)?.clone();
        record.instance_ids = self
            .pins
            .iter()
            .filter(|(_, pin)| pin.device_id == device_id)
            .map(|(key, _)| key.clone())
            .collect();
        record.instance_ids.sort();
        record.tokens = [Role::Node, Role::Operator]
            .iter()
            .filter_map(|r| self.tokens.get(&(device_id.to_string(), *r)))
            .map(TokenSummary::from)
            .collect();
        Some(record)
    }
}

impl MemoryRegistry {
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is applied whole under the lock: a poisoned lock
        // holds no half-made change.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides and applies a claim at once.
    pub fn claim_now(&self, claim: &Claim) -> ClaimCheck {
        let mut state = self.lock();
        let found = Found {
            pin: state.pins.get(&claim.key).cloned(),
            device_with_key_as_id: state
                .devices
                .get(&claim.key)
                .map(|r| (r.first_seen_ms, r.display_name.clone())),
        };
        let device = &claim.device;
        let known = state.devices.contains_key(&device.id);
        let decision = decide(claim, &found);
        if let Decision::Keep(check @ ClaimCheck::Conflict(_)) = decision {
            return check;
        }
        // A new device enrolling with a join token takes one of its uses.
        if let (false, Some(id)) = (known, &device.join_token) {
            match state.join_tokens.get_mut(id) {
                Some(t) if t.state(claim.now_ms) == JoinTokenState::Active => {
                    t.used += 1;
                    t.last_used_at_ms = t.last_used_at_ms.max(Some(claim.now_ms));
                }
                t => return ClaimCheck::JoinTokenRefused(t.cloned().map(Box::new)),
            }
        }
        let check = match decision {
            Decision::Keep(check) => {
                // A known key: nothing to store but a token issued with it.
                if let Some(t) = &claim.token {
                    state.issue_token(&device.id, t.role, t.sha256, &t.scopes, claim.now_ms);
                }
                return check;
            }
            Decision::OwnId if known => ClaimCheck::Known,
            Decision::OwnId => ClaimCheck::New,
            Decision::PinToClaimant => {
                state.pins.insert(
                    claim.key.clone(),
                    Pin {
                        device_id: device.id.clone(),
                        pinned_at_ms: claim.now_ms,
                        display_name: device.display_name.clone(),
                    },
                );
                ClaimCheck::New
            }
        };
        state.seen(device, claim.now_ms);
        if let Some(t) = &claim.token {
            state.issue_token(&device.id, t.role, t.sha256, &t.scopes, claim.now_ms);
        }
        check
    }
}

impl DeviceRegistry for MemoryRegistry {
    fn claim(&self, claim: Claim) -> BoxFuture<'static, Result<ClaimCheck>> {
        let check = self.claim_now(&claim);
        Box::pin(async move { Ok(check) })
    }

    fn forget(&self, key: &str) -> Result<Option<Pin>> {
        Ok(self.lock().pins.remove(key))
    }

    fn pin(&self, key: &str) -> Result<Option<Pin>> {
        Ok(self.lock().pins.get(key).cloned())
    }

    fn is_known_device(&self, device_id: &str) -> bool {
        self.lock().devices.contains_key(device_id)
    }

    fn counts(&self) -> Result<Counts> {
        let state = self.lock();
        let by_state =
            |s: DeviceState| state.devices.values().filter(|r| r.state == s).count() as u64;
        Ok(Counts {
            devices: state.devices.len() as u64,
            pins: state.pins.len() as u64,
            approved: by_state(DeviceState::Approved),
            rejected: by_state(DeviceState::Rejected),
            revoked: by_state(DeviceState::Revoked),
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn device_state(&self, device_id: &str) -> Result<Option<DeviceState>> {
        Ok(self.lock().devices.get(device_id).map(|r| r.state))
    }

    fn change(&self, change: Change) -> Result<Option<DeviceRecord>> {
        let mut state = self.lock();
        match change {
            Change::SetState {
                device_id,
                state: new_state,
                by,
                device,
                now_ms,
            } => {
                if !state.devices.contains_key(&device_id) {
                    match &device {
                        Some(device) if device.id == device_id => {
                            state.seen(device, now_ms);
                            // Approving a request made with a join token
                            // counts as its use, uses left or not.
                            let token = device.join_token.as_ref();
                            if let Some(t) = token.and_then(|id| state.join_tokens.get_mut(id)) {
                                t.used += 1;
                            }
                        }
                        _ => return Ok(None),
                    }
                }
                if let Some(record) = state.devices.get_mut(&device_id) {
                    record.state = new_state;
                    if new_state == DeviceState::Approved {
                        record.approved_by = by;
                        record.approved_at_ms = Some(now_ms);
                    }
                }
                Ok(state.record(&device_id))
            }
            Change::Label { device_id, label } => {
                if let Some(record) = state.devices.get_mut(&device_id) {
                    record.label = Some(label);
                }
                Ok(state.record(&device_id))
            }
            Change::Remove { device_id } => {
                let record = state.record(&device_id);
                state.devices.remove(&device_id);
                state.pins.retain(|_, pin| pin.device_id != device_id);
                state.tokens.retain(|(id, _), _| *id != device_id);
                Ok(record)
            }
        }
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let state = self.lock();
        let mut all: Vec<DeviceRecord> = state
            .devices
            .keys()
            .filter_map(|id| state.record(id))
            .collect();
        all.sort_by(|a, b| (a.first_seen_ms, &a.device_id).cmp(&(b.first_seen_ms, &b.device_id)));
        Ok(all)
    }

    fn join_token(&self, sha256: &[u8; 32]) -> Result<Option<JoinToken>> {
        let state = self.lock();
        let id = state.join_token_ids.get(sha256);
        Ok(id.and_then(|id| state.join_tokens.get(id)).cloned())
    }

    fn create_join_token(&self, new: NewJoinToken) -> Result<JoinTokenCreated> {
        let mut state = self.lock();
        let now = new.token.created_at_ms;
        let cutoff = now.saturating_sub(JOIN_TOKEN_KEPT_MS);
        state
            .join_tokens
            .retain(|_, t| t.revoked_at_ms.unwrap_or(u64::MAX).min(t.expires_at_ms) > cutoff);
        let State {
            join_tokens,
            join_token_ids,
            ..
        } = &mut *state;
        join_token_ids.retain(|_, id| join_tokens.contains_key(id));
        let live = join_tokens.values().filter(|t| t.is_live(now)).count();
        if live >= MAX_LIVE {
            return Ok(JoinTokenCreated::TooMany(live));
        }
        if join_tokens.contains_key(&new.token.id) || join_token_ids.contains_key(&new.sha256) {
            anyhow::bail!("a join token with this id or secret exists already");
        }
        join_token_ids.insert(new.sha256, new.token.id.clone());
        join_tokens.insert(new.token.id.clone(), new.token.clone());
        Ok(JoinTokenCreated::Created(new.token))
    }

    fn join_tokens(&self) -> Result<Vec<JoinToken>> {
        let mut all: Vec<JoinToken> = self.lock().join_tokens.values().cloned().collect();
        all.sort_by(|a, b| (b.created_at_ms, &a.id).cmp(&(a.created_at_ms, &b.id)));
        Ok(all)
    }

    fn revoke_join_token(&self, id: &str, now_ms: u64) -> Result<Option<JoinToken>> {
        let mut state = self.lock();
        let Some(t) = state.join_tokens.get_mut(id) else {
            return Ok(None);
        };
        t.revoked_at_ms.get_or_insert(now_ms);
        Ok(Some(t.clone()))
    }

    fn join_token_used(&self, id: &str, now_ms: u64) {
        if let Some(t) = self.lock().join_tokens.get_mut(id) {
            t.last_used_at_ms = t.last_used_at_ms.max(Some(now_ms));
        }
    }

    fn device_token(&self, device_id: &str, role: Role) -> Result<Option<TokenRecord>> {
        let key = (device_id.to_string(), role);
        Ok(self.lock().tokens.get(&key).cloned())
    }

    fn change_token(&self, change: TokenChange) -> BoxFuture<'static, Result<Option<TokenRecord>>> {
        let changed = self.change_token_now(change);
        Box::pin(async move { Ok(changed) })
    }
}

impl MemoryRegistry {
    /// Applies a token change at once (see [`TokenChange`]).
    pub fn change_token_now(&self, change: TokenChange) -> Option<TokenRecord> {
        let mut state = self.lock();
        match change {
            TokenChange::Issue {
                device_id,
                role,
                sha256,
                scopes,
                now_ms,
            } => state.issue_token(&device_id, role, sha256, &scopes, now_ms),
            TokenChange::Rotate {
                device_id,
                role,
                sha256,
                scopes,
                now_ms,
            } => {
                let token = state.tokens.get_mut(&(device_id, role))?;
                token.sha256 = sha256;
                if sha256.is_some() {
                    token.issued_at_ms = now_ms;
                    token.revoked_at_ms = None;
                }
                if let Some(scopes) = scopes {
                    token.scopes = scopes;
                }
                token.rotated_at_ms = Some(now_ms);
                Some(token.clone())
            }
            TokenChange::Revoke {
                device_id,
                role,
                now_ms,
            } => {
                let token = state.tokens.get_mut(&(device_id, role))?;
                token.sha256 = None;
                token.revoked_at_ms = Some(now_ms);
                Some(token.clone())
            }
        }
    }
}
