//! What every engine must do, through the MVCC layer. Each test runs on both engines, and on
//! each with its writes queued behind ([`storage::WriteBehind`]).

use clock::Timestamp;
use storage::{Epoch, KeyRange, Limits, MetaKey, StorageError, StorageKey, Version, VersionBatch};

use crate::common::{Fixture, Kind, ts};

fn batch(window: u64, writes: &[(&str, Option<&str>)]) -> VersionBatch {
    let mut b = VersionBatch::new(Epoch(window), ts(window));
    for (k, v) in writes {
        match v {
            Some(v) => b.put(k.as_bytes(), v.as_bytes()),
            None => b.delete(k.as_bytes()),
        }
    }
    b
}

fn value(f: &Fixture, key: &str, at: Timestamp) -> Option<String> {
    f.mvcc().get(key.as_bytes(), at).unwrap().map(|v| String::from_utf8(v.value).unwrap())
}

fn scan_keys(f: &Fixture, range: KeyRange, at: Timestamp, limit: usize) -> Vec<String> {
    let rows = f.mvcc().scan(&range, at, limit).unwrap();
    rows.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect()
}

fn get_sees_the_newest_version_at_or_below_the_read_timestamp(f: &mut Fixture) {
    f.mvcc().apply(&batch(1, &[("k", Some("v1"))])).unwrap();
    f.mvcc().apply(&batch(2, &[("k", Some("v2"))])).unwrap();
    assert_eq!(value(f, "k", ts(0)), None);
    assert_eq!(value(f, "k", ts(1)), Some("v1".into()));
    assert_eq!(
        value(f, "k", ts(2).saturating_sub(std::time::Duration::from_nanos(1))),
        Some("v1".into())
    );
    assert_eq!(value(f, "k", ts(2)), Some("v2".into()));
    assert_eq!(value(f, "k", Timestamp::MAX), Some("v2".into()));
    let v = f.mvcc().get(b"k", ts(5)).unwrap().unwrap();
    assert_eq!(v, Version { ts: ts(2), value: b"v2".to_vec() });
}

fn a_deletion_hides_the_key_from_later_reads_only(f: &mut Fixture) {
    f.mvcc().apply(&batch(1, &[("k", Some("v1"))])).unwrap();
    f.mvcc().apply(&batch(2, &[("k", None)])).unwrap();
    assert_eq!(value(f, "k", ts(1)), Some("v1".into()));
    assert_eq!(value(f, "k", ts(2)), None);
    assert_eq!(f.mvcc().last_write(b"k", ts(3)).unwrap(), Some(ts(2)));
    assert_eq!(f.mvcc().last_write(b"k", ts(1)).unwrap(), Some(ts(1)));
    assert_eq!(f.mvcc().last_write(b"k", ts(0)).unwrap(), None);
}

fn keys_that_share_a_prefix_stay_apart(f: &mut Fixture) {
    // "a" and "a\0" and "ab" must not be confused by a read of "a".
    let mut b = VersionBatch::new(Epoch(1), ts(1));
    b.put(b"a\0".to_vec(), b"zero".to_vec());
    b.put(b"ab".to_vec(), b"b".to_vec());
    f.mvcc().apply(&b).unwrap();
    assert_eq!(f.mvcc().get(b"a", Timestamp::MAX).unwrap(), None);
    f.mvcc().apply(&batch(2, &[("a", Some("a"))])).unwrap();
    assert_eq!(value(f, "a", Timestamp::MAX), Some("a".into()));
    assert_eq!(f.mvcc().get(b"a\0", Timestamp::MAX).unwrap().unwrap().value, b"zero");
}

fn scan_returns_visible_keys_in_order_within_bounds(f: &mut Fixture) {
    f.mvcc().apply(&batch(1, &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))])).unwrap();
    f.mvcc().apply(&batch(2, &[("b", None), ("d", Some("2")), ("a", Some("2"))])).unwrap();
    assert_eq!(scan_keys(f, KeyRange::all(), ts(1), usize::MAX), ["a", "b", "c"]);
    assert_eq!(scan_keys(f, KeyRange::all(), ts(2), usize::MAX), ["a", "c", "d"]);
    assert_eq!(scan_keys(f, KeyRange::new("b", "d"), ts(2), usize::MAX), ["c"]);
    assert_eq!(scan_keys(f, KeyRange::new("a", "c"), ts(1), usize::MAX), ["a", "b"]);
    assert_eq!(scan_keys(f, KeyRange::from("b"), ts(1), usize::MAX), ["b", "c"]);
    assert_eq!(scan_keys(f, KeyRange::all(), ts(0), usize::MAX), Vec::<String>::new());
    let rows = f.mvcc().scan(&KeyRange::all(), ts(2), usize::MAX).unwrap();
    assert_eq!(rows[0].1, Version { ts: ts(2), value: b"2".to_vec() });
    assert_eq!(rows[1].1, Version { ts: ts(1), value: b"1".to_vec() });
}

fn scan_stops_at_the_limit_counting_only_visible_keys(f: &mut Fixture) {
    f.mvcc()
        .apply(&batch(1, &[("a", Some("1")), ("b", None), ("c", Some("1")), ("d", Some("1"))]))
        .unwrap();
    assert_eq!(scan_keys(f, KeyRange::all(), ts(1), 2), ["a", "c"]);
    assert_eq!(scan_keys(f, KeyRange::all(), ts(1), 0), Vec::<String>::new());
    assert_eq!(scan_keys(f, KeyRange::prefix(b"c"), ts(1), 10), ["c"]);
}

fn the_watermark_is_read_back_after_reopening(f: &mut Fixture) {
    assert_eq!(f.mvcc().applied(), None);
    f.mvcc().apply(&batch(1, &[("k", Some("v"))])).unwrap();
    f.mvcc().apply(&batch(2, &[])).unwrap();
    f.reopen();
    let w = f.mvcc().applied().unwrap();
    assert_eq!((w.window, w.ts), (Epoch(2), ts(2)));
    assert_eq!(value(f, "k", ts(2)), Some("v".into()));
}

fn bookkeeping_records_are_written_with_the_batch_and_read_back(f: &mut Fixture) {
    let mut b = batch(1, &[("k", Some("v"))]);
    b.put_meta(MetaKey::Verdicts(Epoch(1)), b"yes".to_vec());
    b.put_meta(MetaKey::Deferred, b"none".to_vec());
    f.mvcc().apply(&b).unwrap();
    f.reopen();
    assert_eq!(f.mvcc().meta(MetaKey::Verdicts(Epoch(1))).unwrap(), Some(b"yes".to_vec()));
    assert_eq!(f.mvcc().meta(MetaKey::Verdicts(Epoch(2))).unwrap(), None);
    assert_eq!(f.mvcc().meta(MetaKey::Deferred).unwrap(), Some(b"none".to_vec()));
    assert_eq!(
        scan_keys(f, KeyRange::all(), Timestamp::MAX, usize::MAX),
        ["k"],
        "meta is not user data"
    );
}

fn a_window_at_or_below_the_watermark_is_refused_and_changes_nothing(f: &mut Fixture) {
    f.mvcc().apply(&batch(5, &[("k", Some("v5"))])).unwrap();
    for window in [5, 4] {
        let err = f.mvcc().apply(&batch(window, &[("k", Some("again"))])).unwrap_err();
        assert!(matches!(err, StorageError::WindowOutOfOrder { .. }), "{err}");
    }
    f.reopen();
    assert_eq!(f.mvcc().applied().unwrap().window, Epoch(5));
    assert_eq!(value(f, "k", Timestamp::MAX), Some("v5".into()));
}

fn oversize_keys_and_values_are_refused_and_write_nothing(f: &mut Fixture) {
    let limits = Limits::default();
    f.mvcc().apply(&batch(1, &[("ok", Some("1"))])).unwrap();
    let big_key = vec![b'k'; limits.max_key_bytes + 1];
    let big_value = vec![b'v'; limits.max_value_bytes + 1];

    let mut b = VersionBatch::new(Epoch(2), ts(2));
    b.put(b"ok".to_vec(), b"2".to_vec());
    b.put(big_key.clone(), b"v".to_vec());
    assert!(matches!(f.mvcc().apply(&b), Err(StorageError::KeyTooLarge { .. })));

    let mut b = VersionBatch::new(Epoch(2), ts(2));
    b.put(b"ok".to_vec(), b"2".to_vec());
    b.put(b"big".to_vec(), big_value);
    assert!(matches!(f.mvcc().apply(&b), Err(StorageError::ValueTooLarge { .. })));

    assert!(matches!(
        f.mvcc().get(&big_key, Timestamp::MAX),
        Err(StorageError::KeyTooLarge { .. })
    ));
    f.reopen();
    assert_eq!(f.mvcc().applied().unwrap().window, Epoch(1));
    assert_eq!(scan_keys(f, KeyRange::all(), Timestamp::MAX, usize::MAX), ["ok"]);
    assert_eq!(value(f, "ok", Timestamp::MAX), Some("1".into()));
    // A key and a value exactly at the limits are fine, and read back whole.
    let mut b = VersionBatch::new(Epoch(2), ts(2));
    let (key, value) = (vec![b'k'; limits.max_key_bytes], vec![b'v'; limits.max_value_bytes]);
    b.put(key.clone(), value.clone());
    f.mvcc().apply(&b).unwrap();
    assert_eq!(f.mvcc().get(&key, Timestamp::MAX).unwrap().unwrap().value, value);
    f.reopen();
    assert_eq!(f.mvcc().get(&key, Timestamp::MAX).unwrap().unwrap().value, value);
}

/// Regression: applying a window refused a batch over one transaction's limit (10 MiB), so
/// eleven transactions of 1 MiB that landed in one window stopped the shard for good (every
/// replay refused the same window). The limit is per transaction; a window is any number.
fn a_window_larger_than_one_transactions_limit_is_applied_whole(f: &mut Fixture) {
    let limits = Limits::default();
    let mut b = VersionBatch::new(Epoch(1), ts(1));
    for i in 0..11 {
        b.put(format!("part{i}").into_bytes(), vec![i as u8; limits.max_value_bytes - 16]);
    }
    f.mvcc().apply(&b).unwrap();
    f.reopen();
    assert_eq!(f.mvcc().applied().unwrap().window, Epoch(1));
    for i in 0..11u8 {
        let got = f.mvcc().get(format!("part{i}").as_bytes(), Timestamp::MAX).unwrap().unwrap();
        assert_eq!(got.value, vec![i; limits.max_value_bytes - 16]);
    }
}

fn gc_keeps_what_reads_at_the_horizon_see_and_drops_the_rest(f: &mut Fixture) {
    f.mvcc().apply(&batch(1, &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))])).unwrap();
    f.mvcc().apply(&batch(2, &[("a", Some("2")), ("b", None)])).unwrap();
    f.mvcc().apply(&batch(3, &[("a", Some("3")), ("c", Some("3"))])).unwrap();
    let stats = f.mvcc().gc(ts(2)).unwrap();
    // Dropped: a@1 (below a@2), b@1 and the deletion b@2 (reads at >= 2 see nothing either
    // way). Kept: a@2, a@3, c@1 (what a read at 2 sees), c@3.
    assert_eq!((stats.versions_seen, stats.versions_removed), (7, 3));
    assert_eq!(value(f, "a", ts(2)), Some("2".into()));
    assert_eq!(value(f, "a", ts(3)), Some("3".into()));
    assert_eq!(value(f, "b", ts(2)), None);
    assert_eq!(value(f, "c", ts(2)), Some("1".into()));
    assert_eq!(value(f, "c", ts(3)), Some("3".into()));
    let below = f.mvcc().get(b"a", ts(1));
    assert!(matches!(below, Err(StorageError::BelowHorizon { .. })), "{below:?}");
    let again = f.mvcc().gc(ts(2)).unwrap();
    assert_eq!(again.versions_removed, 0, "gc is idempotent");
}

/// Every version key the engine holds, as (user key, timestamp).
fn stored_versions(f: &Fixture) -> Vec<(String, Timestamp)> {
    let mut cursor = f.mvcc().engine().cursor();
    let mut entry = cursor.seek(&StorageKey::versions_start()).unwrap();
    let mut out = Vec::new();
    while let Some((k, _)) = entry {
        if k >= StorageKey::versions_end() {
            break;
        }
        let (key, ts) = StorageKey::decode_version(&k).unwrap();
        out.push((String::from_utf8(key).unwrap(), ts));
        entry = cursor.next().unwrap();
    }
    out
}

/// The horizon refuses reads below it (also after reopening), never changes a read at or
/// above it, and on RocksDB the versions it shadows go as the engine compacts.
fn raising_the_horizon_refuses_reads_below_it_and_compaction_drops_what_it_shadows(
    f: &mut Fixture,
) {
    for window in 1..=6u64 {
        let value = window.to_string();
        let b = batch(window, &[("a", Some(value.as_str())), ("b", Some(value.as_str()))]);
        f.mvcc().apply(&b).unwrap();
    }
    f.mvcc().apply(&batch(7, &[("b", None), ("c", Some("7"))])).unwrap();
    let before = |f: &Fixture| -> Vec<_> {
        (4..=7)
            .map(|t| (value(f, "a", ts(t)), value(f, "b", ts(t)), value(f, "c", ts(t))))
            .collect()
    };
    let expected = before(f);
    assert!(f.mvcc().raise_horizon(ts(4)).unwrap());
    assert!(!f.mvcc().raise_horizon(ts(3)).unwrap(), "a horizon never goes back");
    f.reopen();
    assert_eq!(f.mvcc().horizon(), ts(4), "the horizon is stored");
    for read in [
        f.mvcc().get(b"a", ts(3)).map(|_| ()),
        f.mvcc().scan(&KeyRange::all(), ts(1), 9).map(|_| ()),
    ] {
        assert!(matches!(read, Err(StorageError::BelowHorizon { .. })), "{read:?}");
    }
    f.mvcc().compact().unwrap();
    let kept = stored_versions(f);
    let shadowed = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)];
    match f.kind.is_rocks() {
        // RocksDB collected as it compacted: everything below a@4 and b@4 went.
        true => {
            for (key, t) in shadowed {
                assert!(!kept.contains(&(key.to_string(), ts(t))), "{key}@{t} kept: {kept:?}");
            }
        }
        // The memory engine keeps everything until `gc` deletes it.
        false => assert_eq!(kept.len(), 6 * 2 + 2, "{kept:?}"),
    }
    assert!(kept.contains(&("a".to_string(), ts(4))) && kept.contains(&("b".to_string(), ts(4))));
    assert_eq!(before(f), expected, "reads at or above the horizon are unchanged");
    f.mvcc().raise_horizon(ts(100)).unwrap();
    assert_eq!(f.mvcc().horizon(), ts(7), "no higher than the watermark's timestamp");
}

fn first_change_finds_writes_and_deletions_between_two_timestamps(f: &mut Fixture) {
    f.mvcc().apply(&batch(1, &[("a", Some("1")), ("c", Some("1"))])).unwrap();
    f.mvcc().apply(&batch(2, &[("c", None)])).unwrap();
    f.mvcc().apply(&batch(3, &[("b", Some("3"))])).unwrap();
    let change = |range: KeyRange, after: u64, upto: u64| {
        f.mvcc()
            .first_change(&range, ts(after), ts(upto))
            .unwrap()
            .map(|k| String::from_utf8(k).unwrap())
    };
    assert_eq!(change(KeyRange::all(), 1, 2), Some("c".into()), "a deletion is a change");
    assert_eq!(change(KeyRange::all(), 1, 3), Some("b".into()), "the first changed key in order");
    assert_eq!(change(KeyRange::all(), 0, 1), Some("a".into()));
    assert_eq!(change(KeyRange::all(), 3, 9), None, "nothing after the last write");
    assert_eq!(change(KeyRange::new("a", "b"), 1, 3), None, "a is unchanged since 1");
    assert_eq!(change(KeyRange::new("c", "d"), 2, 3), None);
    assert_eq!(change(KeyRange::all(), 2, 2), None, "an empty interval");
}

macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod memory_engine {
            $( #[test] fn $name() { super::$name(&mut super::Fixture::new(super::Kind::Memory)); } )*
        }
        mod rocks_engine {
            $( #[test] fn $name() { super::$name(&mut super::Fixture::new(super::Kind::Rocks)); } )*
        }
        mod memory_engine_behind {
            $( #[test] fn $name() {
                super::$name(&mut super::Fixture::new(super::Kind::MemoryBehind));
            } )*
        }
        mod rocks_engine_behind {
            $( #[test] fn $name() {
                super::$name(&mut super::Fixture::new(super::Kind::RocksBehind));
            } )*
        }
        mod rocks_engine_apart {
            $( #[test] fn $name() {
                super::$name(&mut super::Fixture::new(super::Kind::RocksApart));
            } )*
        }
        mod rocks_engine_held {
            $( #[test] fn $name() {
                super::$name(&mut super::Fixture::new(super::Kind::RocksHeld));
            } )*
        }
    };
}

on_every_engine!(
    get_sees_the_newest_version_at_or_below_the_read_timestamp,
    a_deletion_hides_the_key_from_later_reads_only,
    keys_that_share_a_prefix_stay_apart,
    scan_returns_visible_keys_in_order_within_bounds,
    scan_stops_at_the_limit_counting_only_visible_keys,
    the_watermark_is_read_back_after_reopening,
    a_window_at_or_below_the_watermark_is_refused_and_changes_nothing,
    oversize_keys_and_values_are_refused_and_write_nothing,
    a_window_larger_than_one_transactions_limit_is_applied_whole,
    gc_keeps_what_reads_at_the_horizon_see_and_drops_the_rest,
    raising_the_horizon_refuses_reads_below_it_and_compaction_drops_what_it_shadows,
    first_change_finds_writes_and_deletions_between_two_timestamps,
    bookkeeping_records_are_written_with_the_batch_and_read_back,
);
