//! Certificate fingerprints: the SHA-256 pins of OpenClaw's
//! `--tls-fingerprint`.

use std::fmt;
use std::path::Path;

use anyhow::Result;
use sha2::{Digest as _, Sha256};

use super::server::read_certs;

/// The SHA-256 of a certificate's DER encoding. Shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Parses a pin as OpenClaw's `normalizeTlsFingerprint` does: surrounding
    /// whitespace and an optional `sha256:` prefix (any case) are ignored;
    /// then either 64 hex digits or 32 colon-separated hex pairs, any case.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let t = text.trim();
        let t = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hex: String = if t.len() == 64 {
            t.to_string()
        } else if t.len() == 95 && t.split(':').all(|pair| pair.len() == 2) {
            t.split(':').collect()
        } else {
            return None;
        };
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2)?;
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Fingerprint(out))
    }

    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The fingerprint of the first (leaf) certificate in a PEM file.
    pub fn of_cert_file(path: &Path) -> Result<Fingerprint> {
        let certs = read_certs(path)?;
        Ok(Fingerprint::of_der(&certs[0]))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The hint shown with every invalid pin.
pub const FINGERPRINT_FORMAT: &str =
    "expected sha256:<64 hex digits> (colons between byte pairs and any case are accepted)";

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";

    #[test]
    fn fingerprints_parse_like_openclaw() {
        let canonical = Fingerprint::parse(HEX).unwrap();
        assert_eq!(canonical.to_string(), format!("sha256:{HEX}"));
        let colons: String = HEX
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for text in [
            format!("sha256:{HEX}"),
            format!("SHA256:{}", HEX.to_uppercase()),
            format!("  {colons}\n"),
            format!("sha256:{}", colons.to_uppercase()),
        ] {
            assert_eq!(Fingerprint::parse(&text), Some(canonical), "{text}");
        }
        for bad in [
            "",
            "sha256:",
            &HEX[..62],
            &format!("{HEX}00"),
            &format!("sha1:{HEX}"),
            &HEX.replace('a', "g"),
            &format!("{}::", &colons[..92]),
            &format!("sha256: {HEX}"),
        ] {
            assert_eq!(Fingerprint::parse(bad), None, "{bad:?}");
        }
    }
}
