//! A text message to one client as pieces: its own small text (a response
//! id, an event's `seq`) around shared JSON (an event's payload, the
//! presence list as [`ListJson`]). Building one copies no list, and a
//! message larger than [`FRAGMENT`] is sent in fragments of that size,
//! each copied just before it is written: a client that does not read
//! holds the pieces of the message it is stuck on (shared with every other
//! client sent the same list) and one fragment, never a copy of the list.

use std::sync::Arc;

use crate::presence::ListJson;

/// The most one frame of ours carries. A longer message is sent as a
/// fragmented text message (RFC 6455 5.4) of frames this size.
pub const FRAGMENT: usize = 16 * 1024;

/// A text message made of pieces. Cheap to clone: the pieces are shared.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    parts: Vec<Part>,
    len: usize,
}

#[derive(Debug, Clone)]
enum Part {
    Text(Arc<str>),
    List(ListJson),
}

impl Part {
    fn pieces(&self) -> usize {
        match self {
            Part::Text(_) => 1,
            Part::List(list) => list.pieces(),
        }
    }

    fn piece(&self, i: usize) -> &str {
        match self {
            Part::Text(text) if i == 0 => text,
            Part::Text(_) => "",
            Part::List(list) => list.piece(i),
        }
    }
}

impl From<String> for Outgoing {
    fn from(text: String) -> Outgoing {
        let mut out = Outgoing::default();
        out.push_text(text);
        out
    }
}

impl Outgoing {
    /// Appends text of its own (or shared: an `Arc<str>`).
    pub fn push_text(&mut self, text: impl Into<Arc<str>>) {
        let text = text.into();
        self.len += text.len();
        self.parts.push(Part::Text(text));
    }

    /// Appends the presence list, shared.
    pub fn push_list(&mut self, list: ListJson) {
        self.len += list.len();
        self.parts.push(Part::List(list));
    }

    /// Appends `other`'s pieces, shared.
    pub fn push_all(&mut self, other: &Outgoing) {
        self.len += other.len;
        self.parts.extend(other.parts.iter().cloned());
    }

    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole message as one text.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.len);
        for part in &self.parts {
            for i in 0..part.pieces() {
                text.push_str(part.piece(i));
            }
        }
        text
    }

    /// The message in chunks of at most [`FRAGMENT`] bytes, each cut on a
    /// character boundary, to send as the frames of one text message.
    pub fn fragments(&self) -> Fragments<'_> {
        Fragments {
            message: self,
            part: 0,
            piece: 0,
            offset: 0,
            given: 0,
        }
    }
}

/// A cursor over a message's bytes: which part, which piece of it, how far
/// into that piece, and how much was given.
pub struct Fragments<'a> {
    message: &'a Outgoing,
    part: usize,
    piece: usize,
    offset: usize,
    given: usize,
}

impl Fragments<'_> {
    /// The next chunk and whether it is the last; `None` once all is given.
    pub fn next_chunk(&mut self) -> Option<(Vec<u8>, bool)> {
        let mut chunk: Vec<u8> = Vec::with_capacity(FRAGMENT.min(self.message.len));
        while let Some(part) = self.message.parts.get(self.part) {
            if self.piece >= part.pieces() {
                (self.part, self.piece, self.offset) = (self.part + 1, 0, 0);
                continue;
            }
            let rest = &part.piece(self.piece)[self.offset..];
            let room = FRAGMENT - chunk.len();
            if rest.len() <= room {
                chunk.extend_from_slice(rest.as_bytes());
                (self.piece, self.offset) = (self.piece + 1, 0);
                continue;
            }
            let mut cut = room;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            chunk.extend_from_slice(&rest.as_bytes()[..cut]);
            self.offset += cut;
            break;
        }
        if chunk.is_empty() {
            return None;
        }
        self.given += chunk.len();
        Some((chunk, self.given == self.message.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_rebuild_the_message_on_character_boundaries() {
        let mut message = Outgoing::default();
        message.push_text("{\"a\":\"");
        message.push_text("é".repeat(FRAGMENT));
        message.push_text("\"}");
        let mut fragments = message.fragments();
        let mut rebuilt = Vec::new();
        let mut count = 0;
        while let Some((chunk, last)) = fragments.next_chunk() {
            assert!(chunk.len() <= FRAGMENT);
            assert!(
                std::str::from_utf8(&chunk).is_ok(),
                "cut inside a character"
            );
            rebuilt.extend_from_slice(&chunk);
            count += 1;
            assert_eq!(
                last,
                rebuilt.len() == message.len(),
                "last flag at {}",
                rebuilt.len()
            );
        }
        assert_eq!(rebuilt, message.to_text().as_bytes());
        assert_eq!(count, message.len().div_ceil(FRAGMENT - 1));
    }

    #[test]
    fn a_short_message_is_one_chunk() {
        let message = Outgoing::from(String::from("{}"));
        let mut fragments = message.fragments();
        assert_eq!(fragments.next_chunk(), Some((b"{}".to_vec(), true)));
        assert_eq!(fragments.next_chunk(), None);
        assert!(Outgoing::default().fragments().next_chunk().is_none());
    }
}
