//! [`Limits`]: the sizes storage refuses to exceed (DESIGN.md section 8).

/// Size limits enforced on every write, with DESIGN.md's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest user key, in bytes (default 10 KiB).
    pub max_key_bytes: usize,
    /// Largest value, in bytes (default 1 MiB).
    pub max_value_bytes: usize,
    /// Largest sum of key and value bytes in one batch (default 10 MiB).
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
