//! The key codec sorts as the typed keys do, and each key space scans as intended.

use clock::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::keycode::{KeyDecoder, KeyEncoder};
use storage::{KeyRange, MetaKey, Quoted, StorageKey};

use crate::common::seeds;

/// A composite key like the benchmark's: (u64, bytes, i64).
type Tuple = (u64, Vec<u8>, i64);

fn encode(t: &Tuple) -> Vec<u8> {
    KeyEncoder::new().u64(t.0).bytes(&t.1).i64(t.2).finish()
}

fn random_tuple(rng: &mut StdRng) -> Tuple {
    // Small alphabets with 0x00, 0x01 and 0xff, so escapes and prefixes collide often.
    let len = rng.random_range(0..5);
    let bytes = (0..len).map(|_| [0x00, 0x01, 0x02, 0xfe, 0xff][rng.random_range(0..5)]).collect();
    (rng.random_range(0..3), bytes, rng.random_range(-2..3))
}

#[test]
fn encoded_tuples_sort_exactly_as_the_tuples_do() {
    for seed in seeds(20) {
        let mut rng = StdRng::seed_from_u64(seed);
        let tuples: Vec<Tuple> = (0..300).map(|_| random_tuple(&mut rng)).collect();
        for a in &tuples {
            for b in tuples.iter().take(60) {
                assert_eq!(
                    a.cmp(b),
                    encode(a).cmp(&encode(b)),
                    "seed {seed}: {a:?} vs {b:?} encode to {:02x?} vs {:02x?}",
                    encode(a),
                    encode(b)
                );
            }
        }
    }
}

#[test]
fn encoded_tuples_decode_to_what_was_encoded() {
    for seed in seeds(20) {
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            let t = random_tuple(&mut rng);
            let bytes = encode(&t);
            let mut d = KeyDecoder::new(&bytes);
            let back = (d.u64().unwrap(), d.bytes().unwrap(), d.i64().unwrap());
            d.finish().unwrap();
            assert_eq!(back, t, "seed {seed}");
        }
    }
}

#[test]
fn truncated_or_trailing_bytes_do_not_decode() {
    let bytes = KeyEncoder::new().bytes(b"abc").u64(7).finish();
    let mut d = KeyDecoder::new(&bytes[..bytes.len() - 1]);
    d.bytes().unwrap();
    assert!(d.u64().is_err());
    let mut d = KeyDecoder::new(&bytes[..3]);
    assert!(d.bytes().is_err(), "an unterminated string must not decode");
    let mut d = KeyDecoder::new(&bytes);
    d.bytes().unwrap();
    assert!(d.finish().is_err());
}

#[test]
fn meta_keys_sort_before_every_version() {
    let meta = StorageKey::Meta(MetaKey::AppliedWindow).encode();
    let lowest = StorageKey::Version { key: b"", ts: Timestamp::MAX }.encode();
    assert!(meta < lowest);
    assert!(meta < StorageKey::versions_start());
    for other in [MetaKey::Deferred, MetaKey::Verdicts(storage::Epoch(u64::MAX))] {
        assert!(StorageKey::Meta(other).encode() < StorageKey::versions_start());
    }
}

#[test]
fn versions_of_a_key_sort_newest_first_and_before_the_next_key() {
    let v = |key: &'static [u8], ts: u64| {
        StorageKey::Version { key, ts: Timestamp::from_u64(ts) }.encode()
    };
    assert!(v(b"a", 9) < v(b"a", 5));
    assert!(v(b"a", 0) < v(b"a\0", 9), "every version of a key precedes the next key");
    assert!(v(b"a\0", 0) < v(b"a\x01", 9));
    assert!(v(b"a\xff", 0) < v(b"b", 9));
    for key in [&b"a"[..], b"a\0", b"ab"] {
        let prefix = StorageKey::version_prefix(key);
        for other in [&b"a"[..], b"a\0", b"ab"] {
            let owns = v(other, 3).starts_with(&prefix);
            assert_eq!(owns, key == other, "prefix of {key:?} vs version of {other:?}");
        }
        let (back, ts) = StorageKey::decode_version(&v(key, 3)).unwrap();
        assert_eq!((back.as_slice(), ts), (key, Timestamp::from_u64(3)));
    }
    let end = StorageKey::versions_end();
    assert!(v(&[0xff; 16], 0) < end);
}

#[test]
fn prefix_ranges_hold_exactly_the_keys_with_the_prefix() {
    let r = KeyRange::prefix(b"ab");
    assert!(r.contains(b"ab") && r.contains(b"ab\0") && r.contains(b"ab\xff\xff"));
    assert!(!r.contains(b"a") && !r.contains(b"ac") && !r.contains(b"aa\xff"));
    let r = KeyRange::prefix(b"a\xff");
    assert_eq!(r.end.as_deref(), Some(&b"b"[..]));
    assert_eq!(KeyRange::prefix(b"\xff\xff").end, None);
    assert!(KeyRange::new("b", "a").is_empty() && !KeyRange::new("a", "b").is_empty());
    let p = KeyRange::point(b"ab");
    assert!(p.contains(b"ab") && !p.contains(b"ab\0") && !p.contains(b"a") && !p.contains(b"abc"));
}

#[test]
fn only_point_ranges_have_a_point() {
    assert_eq!(KeyRange::point(b"ab").as_point(), Some(&b"ab"[..]));
    assert_eq!(KeyRange::point(b"").as_point(), Some(&b""[..]));
    assert_eq!(KeyRange::prefix(b"ab").as_point(), None);
    assert_eq!(KeyRange::new("ab", "ab\x01").as_point(), None);
    assert_eq!(KeyRange::new("ab", "ac\0").as_point(), None);
    assert_eq!(KeyRange::from("ab").as_point(), None);
}

/// A key in a message is quoted whole when short, by its first bytes and its length when
/// long. (Moved from a unit test in `range.rs`, which never ran: the library's own tests are
/// off, all of them live in this binary.)
#[test]
fn a_long_key_is_quoted_by_its_first_bytes_and_its_length() {
    assert_eq!(Quoted(b"acct/1").to_string(), "\"acct/1\"");
    let long = vec![b'x'; 60 * 1024];
    let quoted = Quoted(&long).to_string();
    assert_eq!(quoted, format!("\"{}\"... (61440 bytes)", "x".repeat(32)));
}
