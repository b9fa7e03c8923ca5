//! Random data and inputs as the TPC-C specification generates them (clauses 2.1.6, 4.3.2
//! and 4.3.3): NURand, last names from syllables, random strings, and the population sizes.

use rand::Rng;
use rand::rngs::StdRng;

/// Districts per warehouse (fixed by the specification).
pub const DISTRICTS: u32 = 10;

/// How many rows the loader writes per warehouse. The specification's sizes are the default;
/// smaller ones are for quick runs, and reports say when they were used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Population {
    /// Items (ITEM rows, and STOCK rows per warehouse): 100,000 in the specification.
    pub items: u32,
    /// Customers per district, and orders per district: 3,000 in the specification.
    pub customers: u32,
}

impl Population {
    /// The specification's population.
    pub const STANDARD: Population = Population { items: 100_000, customers: 3_000 };

    /// Undelivered orders (NEW-ORDER rows) per district at load: the last 900 of 3,000.
    pub fn new_orders(&self) -> u32 {
        self.customers * 900 / 3_000
    }

    /// Whether this is smaller than the specification's.
    pub fn is_scaled(&self) -> bool {
        *self != Population::STANDARD
    }

    /// The largest last-name number customers have: 999, fewer if there are fewer than 1,000
    /// customers per district (the first 1,000 take names 0..999 in order).
    pub fn max_name(&self) -> u32 {
        self.customers.min(1_000) - 1
    }
}

/// The NURand constant C for customer last names at load time (clause 2.1.6).
pub const C_LAST_LOAD: u32 = 157;
/// C for last names while running: differs from the load's by 66, inside the allowed
/// 65..=119 and not 96 or 112 (clause 2.1.6.1).
pub const C_LAST_RUN: u32 = 223;
/// C for customer ids.
pub const C_ID: u32 = 259;
/// C for item ids.
pub const C_OL_I_ID: u32 = 7_911;

/// NURand(A, x, y) with constant `c` (clause 2.1.6).
pub fn nurand(rng: &mut StdRng, a: u32, x: u32, y: u32, c: u32) -> u32 {
    (((rng.random_range(0..=a) | rng.random_range(x..=y)) + c) % (y - x + 1)) + x
}

const SYLLABLES: [&str; 10] =
    ["BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING"];

/// The last name numbered `n` (0..=999): three syllables, one per decimal digit.
pub fn last_name(n: u32) -> String {
    let mut s = String::with_capacity(15);
    for digit in [n / 100, (n / 10) % 10, n % 10] {
        s.push_str(SYLLABLES[digit as usize]);
    }
    s
}

/// A random last name for a run: NURand(255, 0, 999) with the run constant.
pub fn run_last_name(rng: &mut StdRng, pop: Population) -> String {
    last_name(nurand(rng, 255, 0, pop.max_name(), C_LAST_RUN))
}

/// A customer id for a run: NURand(1023, 1, customers).
pub fn customer_id(rng: &mut StdRng, pop: Population) -> u32 {
    nurand(rng, 1023, 1, pop.customers, C_ID)
}

/// An item id for a run: NURand(8191, 1, items).
pub fn item_id(rng: &mut StdRng, pop: Population) -> u32 {
    nurand(rng, 8191, 1, pop.items, C_OL_I_ID)
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A random alphanumeric string of `min..=max` characters.
pub fn astring(rng: &mut StdRng, min: usize, max: usize) -> String {
    let len = rng.random_range(min..=max);
    (0..len).map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char).collect()
}

/// A random numeric string of `min..=max` digits.
pub fn nstring(rng: &mut StdRng, min: usize, max: usize) -> String {
    let len = rng.random_range(min..=max);
    (0..len).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

/// A zip code: four random digits and "11111".
pub fn zip(rng: &mut StdRng) -> String {
    nstring(rng, 4, 4) + "11111"
}

/// I_DATA or S_DATA: 26..50 characters, 10% of them containing "ORIGINAL".
pub fn data_with_original(rng: &mut StdRng) -> String {
    let mut s = astring(rng, 26, 50);
    if rng.random_range(0..10) == 0 {
        let at = rng.random_range(0..=s.len() - 8);
        s.replace_range(at..at + 8, "ORIGINAL");
    }
    s
}

/// A tax rate: 0.0000 to 0.2000, in basis points.
pub fn tax(rng: &mut StdRng) -> i64 {
    rng.random_range(0..=2_000)
}

/// A permutation of `1..=n`, for the customers of a district's initial orders.
pub fn permutation(rng: &mut StdRng, n: u32) -> Vec<u32> {
    let mut p: Vec<u32> = (1..=n).collect();
    for i in (1..p.len()).rev() {
        p.swap(i, rng.random_range(0..=i));
    }
    p
}
