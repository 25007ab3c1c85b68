//! The registry in memory: for gateways embedded without a state directory
//! (tests, benches, fuzzing). Same rule ([`super::decide`]), nothing kept.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use anyhow::Result;
use futures_util::future::BoxFuture;

use super::{decide, Claim, ClaimCheck, Counts, Decision, DeviceRegistry, Found, Pin};

/// Devices (id → first seen, display name) and pins, under one lock.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    devices: HashMap<String, (u64, Option<String>)>,
    pins: HashMap<String, Pin>,
}

impl MemoryRegistry {
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is one map operation: a poisoned lock holds no
        // half-made change.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides and applies a claim at once.
    pub fn claim_now(&self, claim: &Claim) -> ClaimCheck {
        let mut state = self.lock();
        let found = Found {
            pin: state.pins.get(&claim.key).cloned(),
            device_with_key_as_id: state.devices.get(&claim.key).cloned(),
        };
        let device = &claim.device;
        let known = state.devices.contains_key(&device.id);
        let check = match decide(claim, &found) {
            Decision::Keep(check) => return check,
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
        state
            .devices
            .entry(device.id.clone())
            .or_insert((claim.now_ms, device.display_name.clone()));
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
        Ok(Counts {
            devices: state.devices.len() as u64,
            pins: state.pins.len() as u64,
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
