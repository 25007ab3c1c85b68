//! Host facts: everything `clawnode` reports about the machine it runs on.
//!
//! This module is the single source for those facts, so the node agent (its
//! `connect` and presence beacons) and the gateway's own self entry describe
//! the host identically:
//!
//! * [`HostFacts`] — host name, primary IP, platform string, device family
//!   and model identifier, gathered once per connection attempt;
//! * [`primary_ip`] — the address other machines most likely reach us on;
//! * [`last_input_seconds`] — terminal idle time, as `w` shows it;
//! * [`HostStatsSampler`] — the resource snapshot sent as `node.host.stats`.
//!
//! Everything here reads `/proc`, `/sys`, `/dev` or utmp, any of which may be
//! missing, unreadable or odd (containers, sandboxes, minimal images). Every
//! read degrades to `None` or a documented fallback; nothing here panics.
//! The parsing and choosing logic is split into pure functions so it can be
//! unit-tested with fixtures.

mod idle;
mod net;
mod stats;

use std::net::IpAddr;
use std::path::Path;

pub use idle::{last_input_seconds, tty_lines_from_utmp};
pub use net::{choose_primary_ip, default_route_interface, primary_ip};
pub use stats::HostStatsSampler;

/// Reported `deviceFamily` for every host this daemon runs on.
pub const DEVICE_FAMILY: &str = "Linux";

/// Host name used when the system host name is unreadable or empty.
const FALLBACK_HOSTNAME: &str = "localhost";

/// Kernel release, used when `uname(2)` is unavailable.
const PROC_OSRELEASE: &str = "/proc/sys/kernel/osrelease";

/// SMBIOS/DMI product name (PCs, servers, VMs).
const DMI_PRODUCT_NAME: &str = "/sys/class/dmi/id/product_name";

/// Board model on device-tree systems (Raspberry Pi and other ARM boards),
/// which have no DMI tables.
const DEVICE_TREE_MODEL: &str = "/proc/device-tree/model";

/// Longest model identifier we report; longer values are cut (on a `char`
/// boundary).
const MAX_MODEL_CHARS: usize = 128;

/// Firmware filler values that name no actual product (compared
/// case-insensitively after trimming).
const MODEL_PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "system product name",
    "system name",
    "product name",
    "system version",
    "none",
    "not specified",
    "not applicable",
    "n/a",
    "na",
    "unknown",
    "undefined",
    "invalid",
    "empty",
    "o.e.m.",
    "oem",
    "x.x",
    "type1productconfigid",
    "0",
    "123456789",
];

/// Static-ish facts about this host, gathered once per connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// System host name (lossily decoded); `"localhost"` when unreadable or
    /// empty.
    pub hostname: String,
    /// Primary non-loopback address, see [`primary_ip`].
    pub ip: Option<IpAddr>,
    /// `"linux <kernel release>"`, e.g. `"linux 6.1.0-18-amd64"`; just
    /// `"linux"` if the release cannot be read.
    pub platform: String,
    /// Always [`DEVICE_FAMILY`] (`"Linux"`).
    pub device_family: String,
    /// Hardware model: DMI product name, else device-tree board model, else
    /// the CPU architecture (e.g. `"x86_64"`). Placeholder strings are
    /// ignored.
    pub model_identifier: String,
}

impl HostFacts {
    /// Gathers the facts from the running system. Blocking (small file reads
    /// and one `getifaddrs`), never fails: each fact has a fallback.
    pub fn collect() -> HostFacts {
        HostFacts {
            hostname: hostname_or_fallback(
                hostname::get()
                    .ok()
                    .map(|name| name.to_string_lossy().into_owned()),
            ),
            ip: primary_ip(),
            platform: platform_string(kernel_release().as_deref()),
            device_family: DEVICE_FAMILY.to_string(),
            model_identifier: model_identifier_from(
                read_lossy(Path::new(DMI_PRODUCT_NAME)),
                read_lossy(Path::new(DEVICE_TREE_MODEL)),
                std::env::consts::ARCH,
            ),
        }
    }
}

/// The trimmed host name, or `"localhost"` when absent or blank.
fn hostname_or_fallback(raw: Option<String>) -> String {
    match raw.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => FALLBACK_HOSTNAME.to_string(),
    }
}

/// `"linux <release>"`, or `"linux"` when the release is unknown or blank.
fn platform_string(release: Option<&str>) -> String {
    match release.map(str::trim) {
        Some(release) if !release.is_empty() => format!("linux {release}"),
        _ => "linux".to_string(),
    }
}

/// Kernel release from `uname(2)`, else from `/proc/sys/kernel/osrelease`.
fn kernel_release() -> Option<String> {
    uname_release()
        .or_else(|| read_lossy(Path::new(PROC_OSRELEASE)))
        .map(|release| release.trim().to_string())
        .filter(|release| !release.is_empty())
}

fn uname_release() -> Option<String> {
    let uts = rustix::system::uname();
    Some(uts.release().to_string_lossy().into_owned())
}

/// Picks the model identifier: a usable DMI product name, else a usable
/// device-tree model, else `arch`.
fn model_identifier_from(
    dmi_product_name: Option<String>,
    device_tree_model: Option<String>,
    arch: &str,
) -> String {
    clean_model_name(dmi_product_name)
        .or_else(|| clean_model_name(device_tree_model))
        .unwrap_or_else(|| arch.to_string())
}

/// Trims a raw firmware model string (whitespace and the NUL terminator
/// device-tree strings carry) and rejects empty values, firmware
/// placeholders and values containing control characters.
fn clean_model_name(raw: Option<String>) -> Option<String> {
    let raw = raw?;
    let name = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if name.is_empty()
        || name.chars().any(char::is_control)
        || MODEL_PLACEHOLDERS
            .iter()
            .any(|placeholder| name.eq_ignore_ascii_case(placeholder))
    {
        return None;
    }
    Some(name.chars().take(MAX_MODEL_CHARS).collect())
}

/// Reads a small text file, decoding lossily; `None` on any error.
fn read_lossy(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    #[test]
    fn model_identifier_uses_trimmed_dmi_product_name() {
        assert_eq!(
            model_identifier_from(s("  ThinkCentre M720q\n"), None, "x86_64"),
            "ThinkCentre M720q"
        );
        assert_eq!(
            model_identifier_from(s("Standard PC (Q35 + ICH9, 2009)\n"), None, "x86_64"),
            "Standard PC (Q35 + ICH9, 2009)"
        );
    }

    #[test]
    fn model_identifier_filters_placeholders_and_falls_back_to_arch() {
        for placeholder in [
            "To be filled by O.E.M.\n",
            "To Be Filled By O.E.M.",
            "Default string\n",
            "System Product Name\n",
            "None\n",
            "Not Specified",
            "  \n",
            "",
            "bad\u{7}bell",
        ] {
            assert_eq!(
                model_identifier_from(s(placeholder), None, "x86_64"),
                "x86_64",
                "{placeholder:?} must be ignored"
            );
        }
        assert_eq!(model_identifier_from(None, None, "aarch64"), "aarch64");
    }

    #[test]
    fn model_identifier_falls_back_to_device_tree_model() {
        assert_eq!(
            model_identifier_from(None, s("Raspberry Pi 4 Model B Rev 1.4\0"), "aarch64"),
            "Raspberry Pi 4 Model B Rev 1.4"
        );
        assert_eq!(
            model_identifier_from(s("Default string"), s("Pine64 RockPro64\0"), "aarch64"),
            "Pine64 RockPro64"
        );
        assert_eq!(
            model_identifier_from(s("PowerEdge R640"), s("ignored"), "x86_64"),
            "PowerEdge R640"
        );
    }

    #[test]
    fn model_identifier_is_length_capped() {
        let long = "M".repeat(500);
        assert_eq!(
            model_identifier_from(Some(long), None, "x86_64").len(),
            MAX_MODEL_CHARS
        );
    }

    #[test]
    fn hostname_falls_back_to_localhost() {
        assert_eq!(hostname_or_fallback(s("edge-07\n")), "edge-07");
        assert_eq!(hostname_or_fallback(s("  ")), "localhost");
        assert_eq!(hostname_or_fallback(None), "localhost");
    }

    #[test]
    fn platform_string_shapes() {
        assert_eq!(
            platform_string(Some("6.1.0-18-amd64\n")),
            "linux 6.1.0-18-amd64"
        );
        assert_eq!(platform_string(Some("")), "linux");
        assert_eq!(platform_string(None), "linux");
    }

    #[test]
    fn collected_facts_on_this_machine() {
        let facts = HostFacts::collect();
        assert!(facts.platform.starts_with("linux "), "{}", facts.platform);
        assert_eq!(facts.device_family, "Linux");
        assert!(!facts.hostname.is_empty());
        assert!(!facts.model_identifier.is_empty());
        if let Some(ip) = facts.ip {
            assert!(!ip.is_loopback(), "{ip}");
        }
    }
}
