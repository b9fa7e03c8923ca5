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
//! Huge pages cost a process with many allocating threads, though: mimalloc 3 starts each
//! thread's search for free pages at its own place in the arena (by thread number), so each
//! thread touches 2 MiB pages of its own. `bench tpcc` with 256 client threads ran 1.5 GiB
//! larger (peak 2.6 against 1.1 GiB) and spent its first 10-15 s zeroing fresh huge pages in
//! the kernel (system time 24 s against 3.5 s over a 15 s load and a 10 s run), at half the
//! throughput of the same run on 4 KiB pages. [`fit_huge_pages_to`] gives them up for such a process.
//!
//! The workspace denies `unsafe`; this module is its one exception: calls into mimalloc's C
//! API, which has no safe binding for its options, and the `prctl` that turns huge pages off.
#![allow(unsafe_code)]

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t, mi_version};

/// The mimalloc whose option numbers are below (`mi_option_e` in its `mimalloc.h`; the Rust
/// bindings name only the first options). Another version changes nothing.
const MIMALLOC_VERSION: i32 = 30302;
const ALLOW_THP: mi_option_t = 43;
const GENERIC_COLLECT: mi_option_t = 34;

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

/// How many allocations that miss a page's free list (mimalloc's "generic" path) pass between
/// two collections of the thread's heap ([`collect_rarely`]): mimalloc's most.
pub const GENERIC_COLLECT_EVERY: std::ffi::c_long = 1_000_000;

/// Has mimalloc collect a thread's heap once every [`GENERIC_COLLECT_EVERY`] allocations that
/// miss a page's free list instead of every 10,000, unless the environment sets
/// `MIMALLOC_GENERIC_COLLECT` or the linked mimalloc is not the version whose option numbers
/// this knows. True if it did. Call first thing in `main`.
///
/// A collection visits every page of the heap. A shard thread whose row cache is full (a
/// long TPC-C run: every written row evicts one, so most allocations miss) collected 2 GiB of
/// small entries, tens of thousands of pages, several times a second: 6.5% of the thread, and
/// the allocator's slow path 15% (README, Figures, "A full row cache"). Retired pages are
/// still freed every 1,000 such allocations.
pub fn collect_rarely() -> bool {
    if std::env::var_os("MIMALLOC_GENERIC_COLLECT").is_some() {
        return false;
    }
    // SAFETY: plain calls into the linked mimalloc; the option number is checked against its
    // version first.
    unsafe {
        if mi_version() != MIMALLOC_VERSION || mi_option_get(GENERIC_COLLECT) != 10_000 {
            return false;
        }
        mi_option_set(GENERIC_COLLECT, GENERIC_COLLECT_EVERY);
    }
    true
}

/// The most threads that allocate for which a process keeps transparent huge pages
/// ([`fit_huge_pages_to`]). Measured on this machine's TPC-C (README, "Huge pages and many
/// client threads"): at 64 client threads huge pages won (100 s runs), at 128 they lost
/// (3 rounds of 3) and at 256 by half.
pub const MAX_HUGE_PAGE_THREADS: usize = 64;

/// Turns transparent huge pages off for the rest of the process if it is to run more than
/// [`MAX_HUGE_PAGE_THREADS`] threads that allocate (see the module's documentation), unless
/// the environment sets `MIMALLOC_ALLOW_THP`. Pages already faulted in stay as they are. True
/// if it turned them off. Call before starting the threads.
pub fn fit_huge_pages_to(threads: usize) -> bool {
    if threads <= MAX_HUGE_PAGE_THREADS || std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return false;
    }
    // SAFETY: `prctl` with an option that takes one integer and no pointers; the mimalloc
    // option is set only on the version whose numbers this knows.
    unsafe {
        // The kernel then faults every page of the process in at 4 KiB, mimalloc's arenas
        // advised as huge included; mimalloc itself need not advise new arenas, and purges
        // freed memory at its small granularity again.
        if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
            return false;
        }
        if mi_version() == MIMALLOC_VERSION {
            mi_option_set(ALLOW_THP, 0);
        }
    }
    true
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`).
pub fn huge_pages_disabled() -> bool {
    // SAFETY: `prctl` with an option that takes no arguments.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
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

    /// Fails when a new mimalloc comes in, so that its option numbers are checked again; and
    /// checks that the settings this module makes take.
    #[test]
    fn the_option_numbers_are_those_of_the_linked_mimalloc_and_they_take() {
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
        // generic_collect's default, then the setting.
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(GENERIC_COLLECT) }, 10_000);
        assert!(collect_rarely());
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(GENERIC_COLLECT) }, GENERIC_COLLECT_EVERY);

        // In the same test, as it changes the option the lines above read. A process of few
        // threads keeps its huge pages; one of many gives them up.
        assert!(!fit_huge_pages_to(MAX_HUGE_PAGE_THREADS));
        assert!(!huge_pages_disabled());
        assert!(fit_huge_pages_to(MAX_HUGE_PAGE_THREADS + 1));
        assert!(huge_pages_disabled());
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(ALLOW_THP) }, 0);
    }

    #[test]
    fn the_selected_huge_page_mode_is_the_bracketed_word() {
        assert_eq!(thp_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(thp_mode("[always] madvise never"), Some("always"));
        assert_eq!(thp_mode("always madvise never"), None);
    }
}
