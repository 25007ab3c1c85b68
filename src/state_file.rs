//! Small secret-bearing state files (identity, gateway token): written
//! atomically (temp file + fsync + rename/link + directory fsync) with mode
//! 0600 inside a 0700 directory, so a crash never leaves a half-written file
//! and no other user can read them.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` (and parents) with mode 0700 if it does not exist. An
/// existing directory is left as it is (it may be shared, like `/tmp`), but a
/// group- or world-accessible one is reported so the caller can warn.
pub fn ensure_private_dir(dir: &Path) -> io::Result<DirStatus> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            Ok(if mode & 0o077 != 0 {
                DirStatus::ExistsShared(mode)
            } else {
                DirStatus::Exists
            })
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            Ok(DirStatus::Created)
        }
        Err(e) => Err(e),
    }
}

/// What [`ensure_private_dir`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirStatus {
    Created,
    Exists,
    /// Exists with these permission bits, readable or writable by others.
    ExistsShared(u32),
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique: u64 = rand::random();
    path.with_file_name(format!(".{name}.{unique:016x}.tmp"))
}

fn write_temp(path: &Path, contents: &[u8]) -> io::Result<PathBuf> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// Atomically replaces `path` with `contents` (mode 0600).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = write_temp(path, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Atomically creates `path` with `contents` (mode 0600) unless it already
/// exists. Returns `false`, leaving the existing file untouched, when another
/// writer got there first; nothing already stored is ever overwritten.
pub fn create_atomic(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let tmp = write_temp(path, contents)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_dir_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        assert_eq!(ensure_private_dir(&dir).unwrap(), DirStatus::Created);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(ensure_private_dir(&dir).unwrap(), DirStatus::Exists);
        let f = dir.join("secret");
        write_atomic(&f, b"one").unwrap();
        assert_eq!(mode(&f), 0o600);
        write_atomic(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        // No temp files are left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn create_never_clobbers() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("id");
        assert!(create_atomic(&f, b"first").unwrap());
        assert!(!create_atomic(&f, b"second").unwrap());
        assert_eq!(fs::read(&f).unwrap(), b"first");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn reports_shared_dirs_without_touching_them() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            ensure_private_dir(tmp.path()).unwrap(),
            DirStatus::ExistsShared(0o755)
        );
        assert_eq!(mode(tmp.path()), 0o755);
    }
}
