//! The allocator's settings for the binaries (`sealdb`, `bench`), which make mimalloc the
//! process's `malloc` (its `override` feature), RocksDB's allocations included.
//!
//! mimalloc asks for transparent huge pages on its arenas, but by default returns freed
//! memory to the OS a 4 KiB page at a time, which splits those pages: as RocksDB's block cache
//! churns, a soak kept about 2 of 5 GiB on huge pages. With `allow_thp` at 2 (what
//! `MIMALLOC_ALLOW_THP=2` does) it returns only whole 2 MiB pages, keeps most of the process
//! on them, and its lookups over gigabytes (the block cache's hash table, the memtable's
//! skiplist) miss the TLB less: the README's soak Q.
//!
//! The workspace denies `unsafe`; this module is its one exception: calls into mimalloc's C
//! API, which has no safe binding for its options.
#![allow(unsafe_code)]

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t, mi_version};

/// The mimalloc whose option numbers are below (`mi_option_e` in its `mimalloc.h`; the Rust
/// bindings name only the first options). Another version changes nothing.
const MIMALLOC_VERSION: i32 = 30302;
const ALLOW_THP: mi_option_t = 43;

/// Has mimalloc keep its huge pages whole (see the module's documentation), unless the
/// environment sets `MIMALLOC_ALLOW_THP` or the linked mimalloc is not the version whose
/// option numbers this knows. True if it did. Call first thing in `main`.
pub fn keep_huge_pages() -> bool {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    // SAFETY: plain calls into the linked mimalloc; the option number is checked against its
    // version first.
    unsafe {
        if mi_version() != MIMALLOC_VERSION || mi_option_get(ALLOW_THP) == 0 {
            return false;
        }
        mi_option_set(ALLOW_THP, 2);
    }
    true
}

/// The machine's transparent-huge-page mode (`always`, `madvise` or `never`), if it says.
/// mimalloc's arenas get huge pages under the first two; the README's figures were measured
/// under `madvise`.
pub fn transparent_huge_pages() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    thp_mode(&text).map(str::to_owned)
}

/// The bracketed (selected) word of the kernel's `always [madvise] never`.
fn thp_mode(text: &str) -> Option<&str> {
    text.split_whitespace().find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when a new mimalloc comes in, so that its option numbers are checked again.
    #[test]
    fn the_option_numbers_are_those_of_the_linked_mimalloc() {
        // SAFETY: plain calls into the linked mimalloc.
        let (version, neighbours) = unsafe {
            // page_cross_thread_max_reclaim, minimal_purge_size, arena_max_object_size (KiB).
            (mi_version(), [mi_option_get(42), mi_option_get(44), mi_option_get(45)])
        };
        assert_eq!(version, MIMALLOC_VERSION);
        assert_eq!(neighbours, [32, 0, 2 << 20], "the defaults around allow_thp moved");
        assert!(keep_huge_pages());
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(ALLOW_THP) }, 2);
    }

    #[test]
    fn the_selected_huge_page_mode_is_the_bracketed_word() {
        assert_eq!(thp_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(thp_mode("[always] madvise never"), Some("always"));
        assert_eq!(thp_mode("always madvise never"), None);
    }
}
