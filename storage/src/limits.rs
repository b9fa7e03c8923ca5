//! [`Limits`]: the sizes storage refuses to exceed (DESIGN.md section 8), and the one place
//! they are checked.

use crate::StorageError;

/// Size limits enforced on every write, with DESIGN.md's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest user key, in bytes (default 10 KiB).
    pub max_key_bytes: usize,
    /// Largest value, in bytes (default 1 MiB).
    pub max_value_bytes: usize,
    /// Largest sum of key and value bytes one transaction writes (default 10 MiB). A window's
    /// batch holds many transactions and may be larger.
    pub max_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key_bytes: 10 * 1024,
            max_value_bytes: 1024 * 1024,
            max_batch_bytes: 10 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Refuses a key over the limit.
    pub fn check_key(&self, key: &[u8]) -> Result<(), StorageError> {
        if key.len() > self.max_key_bytes {
            return Err(StorageError::KeyTooLarge { len: key.len(), max: self.max_key_bytes });
        }
        Ok(())
    }

    /// Refuses a value over the limit.
    pub fn check_value(&self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        if value.len() > self.max_value_bytes {
            return Err(StorageError::ValueTooLarge {
                len: value.len(),
                key_len: key.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a key range whose bounds could not be keys within the limit: its start must be
    /// a key within it, and its end at most one byte longer (the end of a
    /// [`KeyRange::point`](crate::KeyRange::point) on the longest key).
    pub fn check_range(&self, range: &crate::KeyRange) -> Result<(), StorageError> {
        self.check_key(&range.start)?;
        match &range.end {
            Some(end) if end.len() > self.max_key_bytes + 1 => {
                Err(StorageError::KeyTooLarge { len: end.len(), max: self.max_key_bytes + 1 })
            }
            _ => Ok(()),
        }
    }

    /// Refuses one transaction's writes (`None` deletes) with any key or value over the
    /// limits, or more bytes in all than one transaction may write.
    pub fn check_writes<'a>(
        &self,
        writes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), StorageError> {
        let total = self.check_each(writes)?;
        if total > self.max_batch_bytes {
            return Err(StorageError::BatchTooLarge { bytes: total, max: self.max_batch_bytes });
        }
        Ok(())
    }

    /// Refuses writes with any key or value over the limits, whatever their total (a window's
    /// writes, of any number of transactions each within [`Limits::check_writes`]); returns
    /// their total bytes.
    pub fn check_each<'a>(
        &self,
        writes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<usize, StorageError> {
        let mut total = 0usize;
        for (key, value) in writes {
            self.check_key(key)?;
            let value = value.unwrap_or_default();
            self.check_value(key, value)?;
            total = total.saturating_add(key.len() + value.len());
        }
        Ok(total)
    }
}
