//! The persisted identity of this host: a stable `instanceId` (UUID) and an
//! Ed25519 device key, created once in the state directory and reused
//! forever. Losing either would make the host show up as a new row and a new
//! device, so a damaged file is an error that names the file and the way to
//! recover, never a silent new identity.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::protocol::device_auth::{self, DeviceAuthPayload};
use crate::state_file::{self, DirStatus};

pub const INSTANCE_ID_FILE: &str = "instance-id";
pub const DEVICE_KEY_FILE: &str = "device-key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} is corrupt ({problem}); restore it from a backup, or delete it to create a new \
         identity (the host will then appear as a new instance/device and may need pairing again)"
    )]
    Corrupt { path: PathBuf, problem: String },
}

/// This host's identity.
#[derive(Clone)]
pub struct DeviceIdentity {
    instance_id: String,
    key: SigningKey,
    device_id: String,
    public_key: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("instance_id", &self.instance_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// What [`DeviceIdentity::load_or_create`] found in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub created_instance_id: bool,
    pub created_device_key: bool,
    /// Permission bits of a pre-existing state directory that others can access.
    pub shared_dir_mode: Option<u32>,
}

impl DeviceIdentity {
    /// Loads the identity from `state_dir`, creating whatever part is missing.
    pub fn load_or_create(state_dir: &Path) -> Result<(DeviceIdentity, LoadReport), IdentityError> {
        let status = state_file::ensure_private_dir(state_dir).map_err(|source| {
            IdentityError::StateDir {
                path: state_dir.to_path_buf(),
                source,
            }
        })?;
        let shared_dir_mode = match status {
            DirStatus::ExistsShared(mode) => Some(mode),
            _ => None,
        };
        let id_path = state_dir.join(INSTANCE_ID_FILE);
        let key_path = state_dir.join(DEVICE_KEY_FILE);
        // The key is created before the instance id, so an instance id
        // without its key was not left by a crashed first start: it is an
        // identity that lost its key, and making a new key would silently
        // change it. A key without an instance id is a first start cut
        // short (the id was never used) and is completed.
        if !exists(&key_path)? && exists(&id_path)? {
            return Err(IdentityError::Corrupt {
                path: key_path,
                problem: format!(
                    "missing, but {} exists: the device key of an existing identity is gone. \
                     Restore it from a backup; or delete {} too to start over as a new \
                     instance (and run `clawnode forget <instanceId>` on the gateway host if \
                     you keep the old instance id)",
                    id_path.display(),
                    INSTANCE_ID_FILE
                ),
            });
        }
        let created_device_key = create_if_missing(&key_path, || {
            let seed: [u8; 32] = rand::random();
            format!("{}\n", URL_SAFE_NO_PAD.encode(seed)).into_bytes()
        })?;
        let created_instance_id = create_if_missing(&id_path, || {
            format!("{}\n", uuid::Uuid::new_v4()).into_bytes()
        })?;
        let instance_id = parse_instance_id(&id_path, &read(&id_path)?)?;
        let key = parse_device_key(&key_path, &read(&key_path)?)?;
        let verifying = key.verifying_key();
        Ok((
            DeviceIdentity {
                instance_id,
                device_id: device_auth::device_id_for(&verifying),
                public_key: device_auth::encode_public_key(&verifying),
                key,
            },
            LoadReport {
                created_instance_id,
                created_device_key,
                shared_dir_mode,
            },
        ))
    }

    /// A new identity held in memory only, never written (the load
    /// generator's simulated nodes).
    pub fn ephemeral(instance_id: impl Into<String>) -> DeviceIdentity {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let verifying = key.verifying_key();
        DeviceIdentity {
            instance_id: instance_id.into(),
            device_id: device_auth::device_id_for(&verifying),
            public_key: device_auth::encode_public_key(&verifying),
            key,
        }
    }

    /// The stable instance id (a lowercase UUID).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Lowercase hex SHA-256 of the public key.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Unpadded base64url of the raw public key.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Signs a device-auth payload (v3) and returns the base64url signature.
    pub fn sign(&self, payload: &DeviceAuthPayload<'_>) -> String {
        device_auth::sign(&self.key, &payload.v3())
    }
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(IdentityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn create_if_missing(
    path: &Path,
    contents: impl FnOnce() -> Vec<u8>,
) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            state_file::create_atomic(path, &contents()).map_err(|source| IdentityError::Write {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(IdentityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| IdentityError::Corrupt {
        path: path.to_path_buf(),
        problem: "not UTF-8 text".into(),
    })
}

fn parse_instance_id(path: &Path, text: &str) -> Result<String, IdentityError> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| IdentityError::Corrupt {
            path: path.to_path_buf(),
            problem: format!("expected a UUID: {e}"),
        })
}

fn parse_device_key(path: &Path, text: &str) -> Result<SigningKey, IdentityError> {
    let corrupt = |problem: &str| IdentityError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| corrupt("expected an unpadded base64url Ed25519 seed"))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt("expected a 32-byte Ed25519 seed"))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (a, report) = DeviceIdentity::load_or_create(&dir).unwrap();
        assert!(report.created_instance_id && report.created_device_key);
        let (b, report) = DeviceIdentity::load_or_create(&dir).unwrap();
        assert!(!report.created_instance_id && !report.created_device_key);
        assert_eq!(a.instance_id(), b.instance_id());
        assert_eq!(a.device_id(), b.device_id());
        assert_eq!(a.device_id().len(), 64);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(INSTANCE_ID_FILE)), 0o600);
        assert_eq!(mode(&dir.join(DEVICE_KEY_FILE)), 0o600);
    }

    #[test]
    fn corrupt_files_are_errors_that_name_the_file_and_keep_it() {
        let tmp = tempfile::tempdir().unwrap();
        DeviceIdentity::load_or_create(tmp.path()).unwrap();
        let key_path = tmp.path().join(DEVICE_KEY_FILE);
        fs::write(&key_path, "garbage!").unwrap();
        let err = DeviceIdentity::load_or_create(tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&key_path.display().to_string()), "{msg}");
        assert!(msg.contains("delete it"), "{msg}");
        assert_eq!(fs::read_to_string(&key_path).unwrap(), "garbage!");

        let id_path = tmp.path().join(INSTANCE_ID_FILE);
        fs::write(&id_path, "not-a-uuid").unwrap();
        let msg = DeviceIdentity::load_or_create(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(INSTANCE_ID_FILE), "{msg}");
    }

    #[test]
    fn a_lost_key_is_an_error_but_a_cut_short_first_start_completes() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, _) = DeviceIdentity::load_or_create(tmp.path()).unwrap();
        let key_path = tmp.path().join(DEVICE_KEY_FILE);
        fs::remove_file(&key_path).unwrap();
        let msg = DeviceIdentity::load_or_create(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&key_path.display().to_string()), "{msg}");
        assert!(msg.contains("Restore it"), "{msg}");
        assert!(!key_path.exists(), "no new key may be made silently");
        assert_eq!(
            fs::read_to_string(tmp.path().join(INSTANCE_ID_FILE))
                .unwrap()
                .trim(),
            first.instance_id()
        );

        // A key alone: the id is created, the key kept.
        let tmp = tempfile::tempdir().unwrap();
        let (a, _) = DeviceIdentity::load_or_create(tmp.path()).unwrap();
        fs::remove_file(tmp.path().join(INSTANCE_ID_FILE)).unwrap();
        let (b, report) = DeviceIdentity::load_or_create(tmp.path()).unwrap();
        assert!(report.created_instance_id && !report.created_device_key);
        assert_eq!(a.device_id(), b.device_id());
    }

    #[test]
    fn signature_verifies_with_the_published_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (id, _) = DeviceIdentity::load_or_create(tmp.path()).unwrap();
        let payload = DeviceAuthPayload {
            device_id: id.device_id(),
            client_id: "node-host",
            client_mode: "node",
            role: "node",
            scopes: &[],
            signed_at_ms: 5,
            token: Some("t"),
            nonce: "n",
            platform: Some("linux 6.1"),
            device_family: Some("Linux"),
        };
        let proof = crate::protocol::DeviceProof {
            id: id.device_id().into(),
            public_key: id.public_key().into(),
            signature: id.sign(&payload),
            signed_at: 5,
            nonce: "n".into(),
        };
        let params = crate::protocol::ConnectParams {
            min_protocol: crate::protocol::PROTOCOL_VERSION,
            max_protocol: crate::protocol::PROTOCOL_VERSION,
            client: crate::protocol::ClientInfo {
                id: "node-host".into(),
                display_name: None,
                version: crate::VERSION.into(),
                platform: "linux 6.1".into(),
                device_family: Some("Linux".into()),
                model_identifier: None,
                mode: "node".into(),
                instance_id: None,
            },
            role: Some(crate::protocol::Role::Node),
            scopes: Vec::new(),
            caps: Vec::new(),
            commands: Vec::new(),
            auth: Some(crate::protocol::ConnectAuth {
                token: Some("t".into()),
                device_token: None,
            }),
            device: Some(proof.clone()),
        };
        let expected = device_auth::Expected::for_connect(&params, "n", 5);
        assert_eq!(
            device_auth::verify(&proof, &expected),
            Ok(device_auth::PayloadVersion::V3)
        );
    }
}
