//! The string being searched as the engine sees it, and the conversion of positions between
//! Python's indices (code points of a str, bytes of a bytes object) and the engine's UTF-8 byte
//! offsets.
//!
//! * A str is searched as its UTF-8 text. A str holding lone surrogates (which RustPython keeps
//!   as WTF-8) is searched as its lossy conversion: each surrogate becomes U+FFFD, which is also
//!   three bytes long, so byte offsets (and slices of the original) stay valid.
//! * A bytes object is searched as text whose characters are its bytes (Latin-1): unchanged if
//!   it is ASCII, else a decoded copy; [`latin1_bytes`] turns a slice back into bytes.
//!
//! Converting positions costs one pass over the text between two positions, so the callers keep
//! one [`Cursor`] per haystack and walk it forwards through the matches (and backwards for the
//! occasional group before its match, after a look-behind): a loop over all matches costs one
//! pass in total. An ASCII haystack needs no conversion at all.

/// Text to search, and whether each of its characters is one byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Haystack<'t> {
    text: &'t str,
    ascii: bool,
}

impl<'t> Haystack<'t> {
    /// A haystack over `text`; `ascii` must say whether `text` is all ASCII (callers usually
    /// know it already; `Haystack::of` finds out).
    pub(crate) fn new(text: &'t str, ascii: bool) -> Haystack<'t> {
        Haystack { text, ascii }
    }

    /// A haystack over `text`, checking whether it is ASCII.
    #[cfg(test)]
    pub(crate) fn of(text: &'t str) -> Haystack<'t> {
        Haystack {
            text,
            ascii: text.is_ascii(),
        }
    }

    /// The whole text.
    pub(crate) fn text(&self) -> &'t str {
        self.text
    }

    /// The text up to byte `end` (a character boundary), for `endpos`: CPython searches "as if
    /// the string is endpos characters long".
    pub(crate) fn truncated(&self, end: usize) -> Haystack<'t> {
        Haystack {
            text: self.text.get(..end).unwrap_or(self.text),
            ascii: self.ascii,
        }
    }

    /// The byte offset of character `index` (clamped to the end), moving `cursor` there.
    pub(crate) fn byte_at(&self, cursor: &mut Cursor, index: usize) -> usize {
        if self.ascii {
            return index.min(self.text.len());
        }
        if index >= cursor.index {
            let rest = &self.text[cursor.byte..];
            let step = index - cursor.index;
            match rest.char_indices().nth(step) {
                Some((offset, _)) => {
                    cursor.byte += offset;
                    cursor.index = index;
                }
                None => {
                    cursor.index += rest.chars().count();
                    cursor.byte = self.text.len();
                }
            }
        } else {
            let before = &self.text[..cursor.byte];
            let step = cursor.index - index;
            // `step` ≥ 1 here; the `step`-th character backwards starts the new position.
            if let Some((offset, _)) = before.char_indices().rev().nth(step - 1) {
                cursor.byte = offset;
                cursor.index = index;
            }
        }
        cursor.byte
    }

    /// The character index of byte offset `byte` (a character boundary), moving `cursor` there.
    pub(crate) fn index_at(&self, cursor: &mut Cursor, byte: usize) -> usize {
        if self.ascii {
            return byte;
        }
        let bytes = self.text.as_bytes();
        let byte = byte.min(bytes.len());
        if byte >= cursor.byte {
            cursor.index += count_chars(&bytes[cursor.byte..byte]);
        } else {
            cursor.index -= count_chars(&bytes[byte..cursor.byte]);
        }
        cursor.byte = byte;
        cursor.index
    }

    /// The byte offset just after the character at `byte` (`byte` must be before the end).
    pub(crate) fn next_boundary(&self, byte: usize) -> usize {
        let width = self.text[byte..].chars().next().map_or(1, char::len_utf8);
        byte + width
    }

    /// Whether the text ends with a newline (what `$` means depends on it).
    pub(crate) fn ends_with_newline(&self) -> bool {
        self.text.ends_with('\n')
    }
}

/// A known pair of positions in a haystack: character `index` starts at byte `byte`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    byte: usize,
    index: usize,
}

/// Characters in UTF-8 `bytes`: the bytes that do not continue a character.
fn count_chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

/// The text a bytes object is searched as: its bytes as Latin-1 characters (the bytes
/// themselves when they are ASCII); and whether they are ASCII.
pub(crate) fn latin1_string(bytes: Vec<u8>) -> (String, bool) {
    let decode = |bytes: &[u8]| bytes.iter().map(|&b| char::from(b)).collect();
    if !bytes.is_ascii() {
        return (decode(&bytes), false);
    }
    // ASCII is UTF-8: the bytes become the text without a copy.
    match String::from_utf8(bytes) {
        Ok(text) => (text, true),
        Err(e) => (decode(e.as_bytes()), false),
    }
}

/// The bytes a slice of a [`latin1_string`] stands for.
pub(crate) fn latin1_bytes(text: &str) -> Vec<u8> {
    // Every character of such a text is below U+0100.
    text.chars().map(|c| c as u32 as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_positions_are_byte_offsets() {
        let hay = Haystack::of("hello");
        let mut cursor = Cursor::default();
        assert_eq!(hay.byte_at(&mut cursor, 3), 3);
        assert_eq!(hay.byte_at(&mut cursor, 99), 5);
        assert_eq!(hay.index_at(&mut cursor, 4), 4);
    }

    #[test]
    fn cursor_walks_both_ways() {
        // é is 2 bytes, 中 3, 😀 4.
        let text = "aé中😀b";
        let hay = Haystack::of(text);
        let mut cursor = Cursor::default();
        let offsets: Vec<usize> = (0..=5).map(|i| hay.byte_at(&mut cursor, i)).collect();
        assert_eq!(offsets, vec![0, 1, 3, 6, 10, 11]);
        assert_eq!(hay.byte_at(&mut cursor, 9), 11);
        assert_eq!(hay.byte_at(&mut cursor, 2), 3);
        assert_eq!(hay.byte_at(&mut cursor, 0), 0);
        assert_eq!(hay.byte_at(&mut cursor, 4), 10);
        let mut cursor = Cursor::default();
        let indices: Vec<usize> = [11, 10, 6, 3, 1, 0, 6]
            .iter()
            .map(|&b| hay.index_at(&mut cursor, b))
            .collect();
        assert_eq!(indices, vec![5, 4, 3, 2, 1, 0, 3]);
        assert_eq!(hay.next_boundary(1), 3);
    }

    #[test]
    fn truncation_keeps_the_start() {
        let hay = Haystack::of("ab\ncd\n");
        assert!(hay.ends_with_newline());
        let cut = hay.truncated(4);
        assert_eq!(cut.text(), "ab\nc");
        assert!(!cut.ends_with_newline());
    }

    #[test]
    fn bytes_round_trip_through_latin1() {
        let (text, ascii) = latin1_string(b"plain".to_vec());
        assert!(ascii && text == "plain");
        let raw = [b'a', 0x80, 0xff, b'\n'];
        let (text, ascii) = latin1_string(raw.to_vec());
        assert!(!ascii);
        assert_eq!(text.chars().count(), 4);
        assert_eq!(latin1_bytes(&text), raw);
        // Bytes that happen to be valid UTF-8 are still one character each.
        let (text, _) = latin1_string("é".as_bytes().to_vec());
        assert_eq!(text.chars().count(), 2);
    }
}
