//! The `node.host.stats` resource snapshot.

use std::fmt;
use std::path::{Path, PathBuf};

use sysinfo::{MemoryRefreshKind, System};

use crate::protocol::payloads::HostStats;

/// Largest CPU count `HostStats::validate` accepts.
const MAX_CPUS: u32 = 4096;
/// Largest load average `HostStats::validate` accepts.
const MAX_LOAD: f64 = 100_000.0;

/// Produces [`HostStats`] snapshots, keeping the `sysinfo` state between
/// samples so each one refreshes only memory counters.
pub struct HostStatsSampler {
    /// `None` only if `sysinfo` could not initialise (memory then reads 0).
    sys: Option<System>,
    disk_path: PathBuf,
}

impl fmt::Debug for HostStatsSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostStatsSampler")
            .field("disk_path", &self.disk_path)
            .finish_non_exhaustive()
    }
}

impl HostStatsSampler {
    /// A sampler reporting disk usage for the filesystem containing
    /// `disk_path`. Cheap: nothing is read until [`sample`](Self::sample).
    pub fn new(disk_path: impl Into<PathBuf>) -> Self {
        HostStatsSampler {
            sys: System::new().ok(),
            disk_path: disk_path.into(),
        }
    }

    /// The path whose filesystem is reported.
    pub fn disk_path(&self) -> &Path {
        &self.disk_path
    }

    /// Takes a snapshot. Always satisfies [`HostStats::validate`]:
    ///
    /// * `cpuCount`: online logical CPUs (like Node's `os.cpus().length`),
    ///   clamped to 1..=4096;
    /// * `loadAverage`: 1/5/15-minute load, omitted when unreadable, all
    ///   zero, or out of range;
    /// * `memoryTotalBytes` / `memoryFreeBytes`: total RAM and *available*
    ///   memory (`MemAvailable`, as Node's `os.freemem()` on Linux), 0/0 if
    ///   unreadable;
    /// * `diskTotalBytes` / `diskAvailableBytes`: `statvfs` of the disk path
    ///   (or, if it does not exist yet, its nearest existing ancestor):
    ///   `f_blocks × f_frsize` and `f_bavail × f_frsize`; both omitted when
    ///   `statvfs` fails.
    pub fn sample(&mut self) -> HostStats {
        let (memory_total_bytes, memory_free_bytes) = match self.sys.as_mut() {
            Some(sys) => {
                sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                memory_pair(sys.total_memory(), sys.available_memory())
            }
            None => (0, 0),
        };
        let load_average = System::load_average()
            .ok()
            .and_then(|load| load_triplet([load.one, load.five, load.fifteen]));
        let disk = disk_usage(&self.disk_path);
        HostStats {
            cpu_count: cpu_count(),
            load_average,
            memory_total_bytes,
            memory_free_bytes,
            disk_total_bytes: disk.map(|(total, _)| total),
            disk_available_bytes: disk.map(|(_, available)| available),
        }
    }
}

/// Where Linux lists the online CPUs, as ranges (`0-3,6,8-11`).
const SYS_CPU_ONLINE: &str = "/sys/devices/system/cpu/online";

/// Online logical CPUs: the ranges in `/sys/devices/system/cpu/online`
/// (what glibc's `sysconf(_SC_NPROCESSORS_ONLN)` reads), which counts the
/// host's CPUs the way Node does, rather than `available_parallelism`,
/// which shrinks to our cgroup quota or affinity mask. Falls back to
/// `available_parallelism`, then 1.
fn cpu_count() -> u32 {
    let online = std::fs::read_to_string(SYS_CPU_ONLINE)
        .ok()
        .and_then(|text| count_cpu_list(&text));
    let count = online
        .filter(|&n| n > 0)
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u64::try_from(n.get()).ok())
        })
        .unwrap_or(1);
    clamp_cpu_count(count)
}

/// The number of CPUs in a kernel CPU list (`0-3,6,8-11` is 9); `None` if
/// it does not parse.
fn count_cpu_list(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    text.split(',').try_fold(0u64, |total, part| {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?),
            None => {
                let n = part.trim().parse::<u64>().ok()?;
                (n, n)
            }
        };
        let span = last.checked_sub(first)?.checked_add(1)?;
        total.checked_add(span)
    })
}

fn clamp_cpu_count(count: u64) -> u32 {
    u32::try_from(count.clamp(1, u64::from(MAX_CPUS))).unwrap_or(1)
}

/// The reported load average, or `None` when all three are zero (nothing
/// measured) or any is non-finite or out of the protocol's range.
fn load_triplet(load: [f64; 3]) -> Option<[f64; 3]> {
    if load.iter().all(|&l| l == 0.0) {
        return None;
    }
    if load
        .iter()
        .any(|&l| !l.is_finite() || !(0.0..=MAX_LOAD).contains(&l))
    {
        return None;
    }
    Some(load)
}

/// `(total, free)` with free capped at total.
fn memory_pair(total: u64, available: u64) -> (u64, u64) {
    (total, available.min(total))
}

/// `(total, available)` bytes of the filesystem containing `path`, trying
/// the nearest existing ancestor when `path` itself is missing.
fn disk_usage(path: &Path) -> Option<(u64, u64)> {
    path.ancestors()
        .filter(|candidate| !candidate.as_os_str().is_empty())
        .find_map(statvfs_usage)
}

fn statvfs_usage(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    disk_from_counts(st.f_blocks, st.f_bavail, st.f_frsize, st.f_bsize)
}

/// Byte totals from `statvfs` block counts. The unit is `f_frsize`, or
/// `f_bsize` should a filesystem leave `f_frsize` zero; `None` if both are.
fn disk_from_counts(blocks: u64, bavail: u64, frsize: u64, bsize: u64) -> Option<(u64, u64)> {
    let unit = if frsize > 0 { frsize } else { bsize };
    if unit == 0 {
        return None;
    }
    let total = blocks.saturating_mul(unit);
    let available = bavail.saturating_mul(unit).min(total);
    Some((total, available))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_on_this_machine_validates() {
        let mut sampler = HostStatsSampler::new("/");
        let stats = sampler.sample();
        stats.validate().unwrap();
        assert!(stats.cpu_count >= 1);
        assert!(stats.memory_total_bytes > 0);
        assert!(stats.memory_free_bytes <= stats.memory_total_bytes);
        assert!(stats.disk_total_bytes.is_some_and(|t| t > 0));
        // A second sample reuses the same System.
        sampler.sample().validate().unwrap();
    }

    #[test]
    fn missing_disk_path_uses_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet/created");
        let stats = HostStatsSampler::new(&missing).sample();
        stats.validate().unwrap();
        assert!(stats.disk_total_bytes.is_some());
        assert_eq!(
            disk_usage(&missing).map(|(total, _)| total),
            disk_usage(dir.path()).map(|(total, _)| total)
        );
    }

    #[test]
    fn unusable_disk_path_omits_both_disk_fields() {
        assert_eq!(
            statvfs_usage(Path::new("/definitely/not/here/clawnode")),
            None
        );
        assert_eq!(statvfs_usage(Path::new("bad\0path")), None);
        assert_eq!(disk_usage(Path::new("")), None);
        let mut sampler = HostStatsSampler::new("");
        let stats = sampler.sample();
        stats.validate().unwrap();
        assert_eq!(stats.disk_total_bytes, None);
        assert_eq!(stats.disk_available_bytes, None);
    }

    #[test]
    fn disk_counts_to_bytes() {
        assert_eq!(
            disk_from_counts(1000, 250, 4096, 4096),
            Some((4_096_000, 1_024_000))
        );
        assert_eq!(
            disk_from_counts(1000, 250, 0, 512),
            Some((512_000, 128_000))
        );
        assert_eq!(disk_from_counts(1000, 250, 0, 0), None);
        assert_eq!(disk_from_counts(10, 20, 1, 1), Some((10, 10)));
        assert_eq!(
            disk_from_counts(u64::MAX, 1, 4096, 0),
            Some((u64::MAX, 4096))
        );
    }

    #[test]
    fn load_average_is_omitted_when_zero_or_invalid() {
        assert_eq!(load_triplet([0.0, 0.0, 0.0]), None);
        assert_eq!(load_triplet([0.56, 0.27, 0.12]), Some([0.56, 0.27, 0.12]));
        assert_eq!(load_triplet([0.0, 0.0, 0.01]), Some([0.0, 0.0, 0.01]));
        assert_eq!(load_triplet([f64::NAN, 1.0, 1.0]), None);
        assert_eq!(load_triplet([-1.0, 1.0, 1.0]), None);
        assert_eq!(load_triplet([1.0, 200_000.0, 1.0]), None);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0-3,6,8-11\n"), Some(9));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("0-x"), None);
    }

    #[test]
    fn cpu_and_memory_are_clamped() {
        assert_eq!(clamp_cpu_count(0), 1);
        assert_eq!(clamp_cpu_count(8), 8);
        assert_eq!(clamp_cpu_count(100_000), 4096);
        assert!(cpu_count() >= 1);
        assert_eq!(memory_pair(100, 40), (100, 40));
        assert_eq!(memory_pair(100, 400), (100, 100));
    }
}
