//! The table of plain file settings (numbers and booleans): one row per
//! setting gives its key, its kind and its default; [`settings_table!`]
//! makes from the rows the serde field of the file section, the resolved
//! struct with its defaults, the range check (with the error message) and
//! the `check-config` lines. A new such setting is one row plus its use.

use std::time::Duration;

use anyhow::{bail, Result};

/// How one kind of setting is read from the file, checked and shown.
pub trait Kind {
    /// The type in the file (`u64` keeps toml's "expected a whole number").
    type File: Copy;
    /// The checked value.
    type Value: Copy + PartialEq + std::fmt::Debug;
    fn check(key: &str, v: Self::File) -> Result<Self::Value>;
    fn show(v: Self::Value) -> String;
}

/// Durations in seconds are at most a day.
pub const MAX_SECS: u64 = 86_400;
/// Counts (connections, handshakes) are at most this.
pub const MAX_COUNT: usize = 1_000_000;

/// Whole seconds, 1 to [`MAX_SECS`].
pub struct Secs;

impl Kind for Secs {
    type File = u64;
    type Value = Duration;
    fn check(key: &str, s: u64) -> Result<Duration> {
        if !(1..=MAX_SECS).contains(&s) {
            bail!("{key} must be a whole number of seconds from 1 to {MAX_SECS}, not {s}");
        }
        Ok(Duration::from_secs(s))
    }
    fn show(v: Duration) -> String {
        v.as_secs().to_string()
    }
}

/// A whole number from `MIN` to `MAX`.
pub struct Whole<const MIN: usize, const MAX: usize>;

impl<const MIN: usize, const MAX: usize> Kind for Whole<MIN, MAX> {
    type File = usize;
    type Value = usize;
    fn check(key: &str, n: usize) -> Result<usize> {
        if !(MIN..=MAX).contains(&n) {
            bail!("{key} must be a whole number from {MIN} to {MAX}, not {n}");
        }
        Ok(n)
    }
    fn show(v: usize) -> String {
        v.to_string()
    }
}

/// Connections, handshakes: 1 to [`MAX_COUNT`].
pub type Count = Whole<1, MAX_COUNT>;

/// A whole number of at least 1, no upper bound.
pub struct AtLeastOne;

impl Kind for AtLeastOne {
    type File = usize;
    type Value = usize;
    fn check(key: &str, n: usize) -> Result<usize> {
        if n == 0 {
            bail!("{key} must be at least 1");
        }
        Ok(n)
    }
    fn show(v: usize) -> String {
        v.to_string()
    }
}

/// `true` or `false`.
pub struct Bool;

impl Kind for Bool {
    type File = bool;
    type Value = bool;
    fn check(_: &str, b: bool) -> Result<bool> {
        Ok(b)
    }
    fn show(v: bool) -> String {
        v.to_string()
    }
}

/// One section of the config file: its other keys (declared by hand,
/// resolved in `Settings::resolve`) and its table rows, each
/// `field (file_key): Kind = default,`. Generates the section's serde
/// struct (unknown keys are errors) and the resolved struct of the rows.
macro_rules! settings_table {
    (
        $(#[$file_meta:meta])*
        file $File:ident {
            $( $(#[$other_meta:meta])* $other:ident : $other_ty:ty, )*
        }
        $(#[$table_meta:meta])*
        table $Table:ident {
            $( $(#[$row_meta:meta])* $field:ident ($key:ident) : $kind:ty = $default:expr, )*
        }
    ) => {
        $(#[$file_meta])*
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $File {
            $( $(#[$other_meta])* pub $other: $other_ty, )*
            $( pub $key: Option<<$kind as $crate::config::table::Kind>::File>, )*
        }

        $(#[$table_meta])*
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub struct $Table {
            $( $(#[$row_meta])* pub $field: <$kind as $crate::config::table::Kind>::Value, )*
        }

        impl Default for $Table {
            fn default() -> Self {
                $Table { $( $field: $default, )* }
            }
        }

        impl $Table {
            /// The file keys of the rows, in order.
            #[allow(dead_code)]
            pub const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

            /// Checks the section's values; an unset key takes its default.
            pub fn resolve(file: &$File) -> anyhow::Result<$Table> {
                Ok($Table {
                    $( $field: match file.$key {
                        Some(v) => <$kind as $crate::config::table::Kind>::check(stringify!($key), v)?,
                        None => $default,
                    }, )*
                })
            }

            /// `key = value` for every row, in order (for `check-config`).
            pub fn lines(&self) -> Vec<String> {
                vec![$(
                    format!(
                        "{} = {}",
                        stringify!($key),
                        <$kind as $crate::config::table::Kind>::show(self.$field)
                    ),
                )*]
            }

            /// The rows' keys that `file` leaves unset.
            #[allow(dead_code)]
            pub fn unset(file: &$File) -> Vec<&'static str> {
                let mut unset = Vec::new();
                $( if file.$key.is_none() { unset.push(stringify!($key)); } )*
                unset
            }
        }
    };
}

pub(crate) use settings_table;
