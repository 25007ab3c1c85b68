//! Text that came from the network, shown to people: which characters may
//! not pass (they drive terminals, forge log or table lines, or reorder what
//! is displayed), and how they are shown instead. One definition for the
//! gateway's field checks and everything the CLI prints.

use std::borrow::Cow;

/// C0 and C1 controls (ESC, BEL, NUL, newline, U+009B CSI, ...), DEL, and
/// the bidirectional embeddings, overrides and isolates (U+202A–U+202E,
/// U+2066–U+2069), which make a terminal show text in another order than
/// it is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every [unsafe](is_unsafe) character written as a visible
/// escape (`\n`, `\u{1b}`, `\u{202e}`); borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_unsafe() {
        for c in [
            '\0', '\x07', '\x1b', '\n', '\r', '\t', '\x7f', '\u{9b}', '\u{85}', '\u{202e}',
            '\u{2066}',
        ] {
            assert!(is_unsafe(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '…', '●', '日', '\u{200d}'] {
            assert!(!is_unsafe(c), "{c:?}");
        }
    }

    #[test]
    fn escape_makes_them_visible_and_keeps_the_rest() {
        assert!(matches!(escape("web-01 · ok"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\x1b]52;c;SGVsbG8=\x07b\nc\u{9b}2J\u{202e}"),
            "a\\u{1b}]52;c;SGVsbG8=\\u{7}b\\nc\\u{9b}2J\\u{202e}"
        );
        assert!(!escape("\x1b[31mred\x1b[0m").chars().any(is_unsafe));
    }
}
