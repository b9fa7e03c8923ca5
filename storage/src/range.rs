//! [`KeyRange`]: a half-open range of user keys.

/// The user keys `start <= key < end`; no `end` means every key from `start` on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRange {
    /// First key in the range.
    pub start: Vec<u8>,
    /// First key after the range, or `None` for no upper bound.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// The keys `start <= key < end`.
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange { start: start.into(), end: Some(end.into()) }
    }

    /// The range holding exactly `key`.
    pub fn point(key: &[u8]) -> KeyRange {
        let mut end = key.to_vec();
        end.push(0);
        KeyRange { start: key.to_vec(), end: Some(end) }
    }

    /// The one key this range holds, if it is a [`KeyRange::point`].
    pub fn as_point(&self) -> Option<&[u8]> {
        let end = self.end.as_deref()?;
        let is_point = end.len() == self.start.len() + 1
            && end.starts_with(&self.start)
            && end.last() == Some(&0);
        is_point.then_some(self.start.as_slice())
    }

    /// Every key from `start` on.
    pub fn from(start: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange { start: start.into(), end: None }
    }

    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange { start: Vec::new(), end: None }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        // The end is the prefix with its last byte below 0xff incremented and the rest dropped;
        // a prefix of only 0xff bytes has no end.
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return KeyRange { start: prefix.to_vec(), end: Some(end) };
            }
        }
        KeyRange { start: prefix.to_vec(), end: None }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// The range for a message: its bounds [`Quoted`].
    pub fn quoted(&self) -> String {
        match &self.end {
            Some(end) => format!("[{}, {})", Quoted(&self.start), Quoted(end)),
            None => format!("[{}, end)", Quoted(&self.start)),
        }
    }

    /// Whether the range holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.end.as_deref().is_some_and(|end| end <= self.start.as_slice())
    }
}

/// A user key for a message: the key itself when short, else its first bytes and its length,
/// so that an error about a 10 KiB key does not carry 10 KiB (`{:?}`-style escaping).
#[derive(Clone, Copy)]
pub struct Quoted<'a>(pub &'a [u8]);

/// How many bytes of a key [`Quoted`] shows.
const QUOTED_BYTES: usize = 32;

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = self.0;
        if key.len() <= QUOTED_BYTES {
            return write!(f, "\"{}\"", key.escape_ascii());
        }
        write!(f, "\"{}\"... ({} bytes)", key[..QUOTED_BYTES].escape_ascii(), key.len())
    }
}

impl std::fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
