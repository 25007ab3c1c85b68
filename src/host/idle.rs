//! Terminal idle time from utmp, as `w` reports it in its IDLE column.
//!
//! utmp is parsed directly (glibc on-disk layout, native byte order) rather
//! than through `getutxent(3)`, which is not thread-safe and keeps global
//! state, or a crate: only three fields are needed.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::SystemTime;

/// Where glibc keeps the login records; `/var/run` is normally a symlink to
/// `/run`, but either may be missing.
const UTMP_PATHS: [&str; 2] = ["/var/run/utmp", "/run/utmp"];

/// Upper bound on how much of a utmp file we read (it is usually a few KiB).
const MAX_UTMP_BYTES: u64 = 4 * 1024 * 1024;

/// `ut_type` of a logged-in user's session.
const USER_PROCESS: i16 = 7;

/// Offsets shared by every glibc layout: `ut_type: i16` at 0 (then 2 bytes
/// of padding and `ut_pid: i32` at 4), `ut_line: [u8; 32]` at 8,
/// `ut_id: [u8; 4]` at 40, `ut_user: [u8; 32]` at 44, `ut_host` at 76.
const UT_TYPE: std::ops::Range<usize> = 0..2;
const UT_LINE: std::ops::Range<usize> = 8..40;
const UT_USER: std::ops::Range<usize> = 44..76;

/// Size of one glibc `struct utmp` record. 384 bytes where glibc defines
/// `__WORDSIZE_TIME64_COMPAT32` (x86_64, every 32-bit target, and most other
/// 64-bit ones): 32-bit `ut_session` and `ut_tv`. On aarch64, s390x and
/// loongarch64 those fields are `long` and `struct timeval`, giving 400 bytes
/// (checked against `libc::utmpx` in the tests).
#[cfg(any(
    target_arch = "aarch64",
    target_arch = "s390x",
    target_arch = "loongarch64"
))]
const UTMP_RECORD_SIZE: usize = 400;
#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "s390x",
    target_arch = "loongarch64"
)))]
const UTMP_RECORD_SIZE: usize = 384;

/// Seconds since the most recent input on any logged-in terminal: the
/// newest access time of `/dev/<ut_line>` over utmp's `USER_PROCESS`
/// records, subtracted from `now` (saturating at 0, so a clock step back
/// reads as "just now").
///
/// `None` when utmp is unreadable, nobody is logged in on a terminal, or no
/// terminal could be stat'ed.
pub fn last_input_seconds(now: SystemTime) -> Option<u64> {
    let utmp_paths = UTMP_PATHS.map(Path::new);
    last_input_seconds_in(&utmp_paths, UTMP_RECORD_SIZE, Path::new("/dev"), now)
}

/// [`last_input_seconds`] from the first readable of `utmp_paths`, with
/// records of `record_size` bytes, and terminals under `dev_dir`.
fn last_input_seconds_in(
    utmp_paths: &[&Path],
    record_size: usize,
    dev_dir: &Path,
    now: SystemTime,
) -> Option<u64> {
    let utmp = read_utmp(utmp_paths)?;
    idle_seconds(&tty_lines_from_records(&utmp, record_size), dev_dir, now)
}

/// The terminal names (`ut_line`, e.g. `pts/3`, `tty1`) of the
/// `USER_PROCESS` records with a non-empty user in raw utmp bytes, in file
/// order without duplicates. Names that are not safe relative paths under
/// `/dev` are dropped, and a truncated trailing record is ignored.
pub fn tty_lines_from_utmp(bytes: &[u8]) -> Vec<String> {
    tty_lines_from_records(bytes, UTMP_RECORD_SIZE)
}

fn tty_lines_from_records(bytes: &[u8], record_size: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    if record_size == 0 {
        return lines;
    }
    for record in bytes.chunks_exact(record_size) {
        let (Some(ut_type), Some(line), Some(user)) = (
            record
                .get(UT_TYPE)
                .and_then(|bytes| <[u8; 2]>::try_from(bytes).ok()),
            record.get(UT_LINE),
            record.get(UT_USER),
        ) else {
            continue;
        };
        if i16::from_ne_bytes(ut_type) != USER_PROCESS || until_nul(user).is_empty() {
            continue;
        }
        let Ok(line) = std::str::from_utf8(until_nul(line)) else {
            continue;
        };
        if is_safe_tty_line(line) && !lines.iter().any(|known| known == line) {
            lines.push(line.to_string());
        }
    }
    lines
}

/// The bytes of a fixed-size C char field up to its first NUL.
fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Whether `line` can be joined onto `/dev` safely: one or more non-empty
/// components of ASCII letters and digits separated by single `/` (`tty1`,
/// `ttyS0`, `pts/3`, `console`). Rejects absolute paths, `..`, `:0`-style
/// X displays, `ssh:notty` and anything else.
fn is_safe_tty_line(line: &str) -> bool {
    !line.is_empty()
        && line.split('/').all(|component| {
            !component.is_empty() && component.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Idle time given terminal names, the directory they live in, and `now`.
fn idle_seconds(lines: &[String], dev_dir: &Path, now: SystemTime) -> Option<u64> {
    let latest = lines
        .iter()
        .filter_map(|line| tty_access_time(&dev_dir.join(line)))
        .max()?;
    Some(now.duration_since(latest).map_or(0, |idle| idle.as_secs()))
}

/// Access time of a terminal device; `None` unless `path` is itself a
/// character device (symlinks are not followed).
fn tty_access_time(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_char_device() {
        return None;
    }
    meta.accessed().ok()
}

fn read_utmp(paths: &[&Path]) -> Option<Vec<u8>> {
    paths.iter().find_map(|path| {
        let file = std::fs::File::open(path).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_UTMP_BYTES).read_to_end(&mut bytes).ok()?;
        Some(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const EMPTY: i16 = 0;
    const BOOT_TIME: i16 = 2;
    const INIT_PROCESS: i16 = 5;
    const LOGIN_PROCESS: i16 = 6;
    const DEAD_PROCESS: i16 = 8;

    fn record(size: usize, ut_type: i16, line: &[u8], user: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; size];
        rec[0..2].copy_from_slice(&ut_type.to_ne_bytes());
        rec[4..8].copy_from_slice(&4242i32.to_ne_bytes());
        rec[8..8 + line.len()].copy_from_slice(line);
        rec[40..42].copy_from_slice(b"ts");
        rec[44..44 + user.len()].copy_from_slice(user);
        rec[76..76 + 9].copy_from_slice(b"10.0.0.99");
        rec
    }

    fn rec(ut_type: i16, line: &[u8], user: &[u8]) -> Vec<u8> {
        record(UTMP_RECORD_SIZE, ut_type, line, user)
    }

    #[test]
    fn record_size_matches_libc_utmpx() {
        #[cfg(all(
            target_env = "gnu",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ))]
        assert_eq!(std::mem::size_of::<libc::utmpx>(), UTMP_RECORD_SIZE);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(UTMP_RECORD_SIZE, 384);
    }

    #[test]
    fn user_process_lines_are_kept_and_other_types_dropped() {
        let mut bytes = Vec::new();
        bytes.extend(rec(BOOT_TIME, b"~", b"reboot"));
        bytes.extend(rec(INIT_PROCESS, b"tty2", b""));
        bytes.extend(rec(LOGIN_PROCESS, b"tty3", b"LOGIN"));
        bytes.extend(rec(USER_PROCESS, b"tty1", b"alice"));
        bytes.extend(rec(DEAD_PROCESS, b"pts/1", b""));
        bytes.extend(rec(EMPTY, b"pts/9", b"mallory"));
        bytes.extend(rec(USER_PROCESS, b"pts/0", b"bob"));
        bytes.extend(rec(USER_PROCESS, b"pts/0", b"bob")); // duplicate
        bytes.extend(rec(USER_PROCESS, b"ttyS0", b"root"));
        bytes.extend(rec(USER_PROCESS, b"pts/7", b"")); // no user: stale
        bytes.extend(rec(USER_PROCESS, b"", b"carol")); // no line
        assert_eq!(tty_lines_from_utmp(&bytes), ["tty1", "pts/0", "ttyS0"]);
    }

    #[test]
    fn full_width_line_without_nul_is_read_whole() {
        let line = [b'a'; 32];
        let bytes = rec(USER_PROCESS, &line, b"dave");
        assert_eq!(tty_lines_from_utmp(&bytes), ["a".repeat(32)]);
    }

    #[test]
    fn truncated_trailing_record_is_ignored() {
        let mut bytes = rec(USER_PROCESS, b"pts/2", b"erin");
        let partial = rec(USER_PROCESS, b"pts/3", b"frank");
        bytes.extend_from_slice(&partial[..100]);
        assert_eq!(tty_lines_from_utmp(&bytes), ["pts/2"]);
        assert!(tty_lines_from_utmp(&partial[..UTMP_RECORD_SIZE - 1]).is_empty());
        assert!(tty_lines_from_utmp(&[]).is_empty());
    }

    #[test]
    fn path_tricks_and_non_tty_lines_are_rejected() {
        let mut bytes = Vec::new();
        for line in [
            &b"../etc/shadow"[..],
            b"/etc/passwd",
            b"pts/../../x",
            b"pts//3",
            b"pts/",
            b"..",
            b".",
            b":0",
            b"ssh:notty",
            b"tty 1",
            b"tty\xff",
            b"pts\\3",
        ] {
            bytes.extend(rec(USER_PROCESS, line, b"eve"));
        }
        bytes.extend(rec(USER_PROCESS, b"pts/3", b"eve"));
        assert_eq!(tty_lines_from_utmp(&bytes), ["pts/3"]);
    }

    #[test]
    fn both_glibc_record_sizes_parse() {
        for size in [384, 400] {
            let mut bytes = record(size, BOOT_TIME, b"~", b"reboot");
            bytes.extend(record(size, USER_PROCESS, b"pts/4", b"gina"));
            bytes.extend(record(size, USER_PROCESS, b"tty1", b"hank"));
            assert_eq!(
                tty_lines_from_records(&bytes, size),
                ["pts/4", "tty1"],
                "{size}"
            );
        }
        assert!(tty_lines_from_records(&[0; 8], 0).is_empty());
        assert!(tty_lines_from_records(&[7, 0, 0, 0], 4).is_empty());
    }

    #[test]
    fn idle_seconds_uses_newest_char_device_atime_and_saturates() {
        // /dev/null is a character device on every Linux system; its atime
        // is whatever it is, so measure relative to it.
        let dev = Path::new("/dev");
        let Some(atime) = tty_access_time(&dev.join("null")) else {
            return;
        };
        let lines = vec!["null".to_string(), "no0such0tty".to_string()];
        let later = atime + Duration::from_secs(1000);
        let idle = idle_seconds(&lines, dev, later).unwrap();
        assert!(idle <= 1000, "{idle}");
        assert_eq!(idle_seconds(&lines, dev, SystemTime::UNIX_EPOCH), Some(0));
        assert_eq!(idle_seconds(&["no0such0tty".to_string()], dev, later), None);
        assert_eq!(idle_seconds(&[], dev, later), None);
    }

    #[test]
    fn non_char_devices_are_not_terminals() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tty1"), b"").unwrap();
        let lines = vec!["tty1".to_string()];
        assert_eq!(idle_seconds(&lines, dir.path(), SystemTime::now()), None);
    }

    /// A pseudo-terminal of our own: its master end (the terminal lives as
    /// long as it is open), its slave end, and its `ut_line` (`pts/N`).
    fn own_pty() -> (std::os::fd::OwnedFd, std::fs::File, String) {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        use std::os::unix::fs::OpenOptionsExt;
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("open /dev/ptmx");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let path = name.to_string_lossy().into_owned();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        let line = path.strip_prefix("/dev/").expect("under /dev").to_string();
        (master, slave, line)
    }

    #[test]
    fn last_input_seconds_reads_utmp_and_the_newest_terminal_atime() {
        // Two terminals of our own; their last input (atime) set in whole
        // seconds: an hour ago on one, 100 s before that on the other.
        let (_m1, older, older_line) = own_pty();
        let (_m2, newer, newer_line) = own_pty();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let input = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() - 3600);
        let set_atime = |tty: &std::fs::File, at| {
            tty.set_times(std::fs::FileTimes::new().set_accessed(at))
                .expect("set the terminal's atime");
        };
        set_atime(&older, input - Duration::from_secs(100));
        set_atime(&newer, input);
        let dev = Path::new("/dev");
        assert_eq!(tty_access_time(&dev.join(&newer_line)), Some(input));

        for size in [384, 400] {
            let dir = tempfile::tempdir().unwrap();
            // The first path is missing: the second is read.
            let missing = dir.path().join("var-run-utmp");
            let utmp = dir.path().join("run-utmp");
            let paths = [missing.as_path(), utmp.as_path()];
            let mut bytes = record(size, BOOT_TIME, b"~", b"reboot");
            bytes.extend(record(size, USER_PROCESS, older_line.as_bytes(), b"ivan"));
            bytes.extend(record(size, USER_PROCESS, b"no0such0tty", b"judy"));
            bytes.extend(record(size, DEAD_PROCESS, b"console", b""));
            bytes.extend(record(size, USER_PROCESS, newer_line.as_bytes(), b"kim"));
            std::fs::write(&utmp, &bytes).unwrap();

            let later = input + Duration::from_secs(1234);
            assert_eq!(
                last_input_seconds_in(&paths, size, dev, later),
                Some(1234),
                "{size}-byte records"
            );
            // A clock behind the last input reads as just now.
            assert_eq!(
                last_input_seconds_in(&paths, size, dev, input - Duration::from_secs(5)),
                Some(0),
                "{size}-byte records"
            );
            // Only the older terminal logged in: its input counts.
            let mut bytes = record(size, USER_PROCESS, older_line.as_bytes(), b"ivan");
            bytes.extend(record(size, DEAD_PROCESS, newer_line.as_bytes(), b""));
            std::fs::write(&utmp, &bytes).unwrap();
            assert_eq!(
                last_input_seconds_in(&paths, size, dev, later),
                Some(1334),
                "{size}-byte records"
            );
            // Nobody logged in on a terminal, or no utmp at all: no idle time.
            std::fs::write(&utmp, record(size, BOOT_TIME, b"~", b"reboot")).unwrap();
            assert_eq!(last_input_seconds_in(&paths, size, dev, later), None);
            assert_eq!(
                last_input_seconds_in(&[missing.as_path()], size, dev, later),
                None
            );
        }
    }
}
