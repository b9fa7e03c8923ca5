//! The nine TPC-C tables (specification clause 1) as typed rows under order-preserving keys,
//! plus two indexes.
//!
//! Every key starts with its warehouse id, so a key-range shard map split on warehouse
//! boundaries keeps each warehouse on one shard:
//!
//! ```text
//!   [w_id u32][table u8][primary key fields...]
//! ```
//!
//! ITEM has no warehouse in the specification. It is read-only after the load, so each
//! warehouse gets its own copy (as Calvin's TPC-C does), and New-Order reads items on its home
//! shard. STOCK is split by column (a vertical partition, which clause 1.6 allows): the four
//! counters New-Order updates ([`Stock`], about 12 bytes) apart from the district texts and
//! data no transaction changes ([`StockInfo`], about 290 bytes), so each of New-Order's ten
//! stock updates writes a version of the counters alone. Likewise W_YTD and D_YTD are counters
//! of their own ([`warehouse_ytd_key`], [`district_ytd_key`]), which Payment adds to
//! ([`txn::Context::add`]) without reading: Payments of one warehouse then do not conflict on
//! its row, nor on their district's, which they only read. Money is in cents, rates in basis
//! points (1/10,000), timestamps in microseconds. CUSTOMER and DISTRICT are split the same
//! way: the four columns Payment and Delivery update ([`CustomerBalance`], about 20 bytes)
//! apart from the rest of the customer (about 650 bytes, C_DATA among it, which only a
//! bad-credit customer's Payment rewrites), and D_NEXT_O_ID ([`district_next_key`]) apart
//! from the district's name, address and tax, which no transaction changes. So a Payment
//! writes a version of the customer's counters alone, and a New-Order four bytes for its
//! district.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use storage::KeyRange;
use storage::keycode::KeyEncoder;

/// Table tags, the byte after the warehouse id.
pub mod tag {
    /// WAREHOUSE.
    pub const WAREHOUSE: u8 = 0;
    /// DISTRICT.
    pub const DISTRICT: u8 = 1;
    /// CUSTOMER.
    pub const CUSTOMER: u8 = 2;
    /// The customer-by-last-name index.
    pub const CUSTOMER_BY_NAME: u8 = 3;
    /// HISTORY.
    pub const HISTORY: u8 = 4;
    /// NEW-ORDER.
    pub const NEW_ORDER: u8 = 5;
    /// ORDER.
    pub const ORDER: u8 = 6;
    /// Each customer's newest order id: what Order-Status looks up (New-Order overwrites it).
    pub const CUSTOMER_LAST_ORDER: u8 = 7;
    /// ORDER-LINE.
    pub const ORDER_LINE: u8 = 8;
    /// ITEM (a copy per warehouse).
    pub const ITEM: u8 = 9;
    /// STOCK's counters (S_QUANTITY, S_YTD, S_ORDER_CNT, S_REMOTE_CNT).
    pub const STOCK: u8 = 10;
    /// The per-district delivery cursor.
    pub const DELIVERY_CURSOR: u8 = 11;
    /// The rest of STOCK (S_DIST_01 .. S_DIST_10, S_DATA).
    pub const STOCK_INFO: u8 = 12;
    /// W_YTD, a counter.
    pub const WAREHOUSE_YTD: u8 = 13;
    /// D_YTD, a counter.
    pub const DISTRICT_YTD: u8 = 14;
    /// CUSTOMER's balance and counters (C_BALANCE, C_YTD_PAYMENT, C_PAYMENT_CNT,
    /// C_DELIVERY_CNT).
    pub const CUSTOMER_BALANCE: u8 = 15;
    /// D_NEXT_O_ID.
    pub const DISTRICT_NEXT: u8 = 16;
}

fn table(w: u32, t: u8) -> KeyEncoder {
    KeyEncoder::with_capacity(24).u32(w).u8(t)
}

/// Where warehouse `w`'s keys begin: the shard map splits here.
pub fn warehouse_start(w: u32) -> Vec<u8> {
    KeyEncoder::new().u32(w).finish()
}

/// The tables New-Order and Payment append to (HISTORY, NEW-ORDER, ORDER, ORDER-LINE), and
/// each customer's newest order id, which New-Order writes with them; one key prefix per
/// warehouse and table: what the benchmark has the
/// embedded database keep in a RocksDB column family of their own
/// ([`embedded::Options::rocksdb_apart`]), so that their growth does not slow reads of the
/// rest. The new-order-payment mix never reads them back; the standard mix's Order-Status,
/// Delivery and Stock-Level do.
pub fn appended_prefixes(warehouses: u32) -> Vec<Vec<u8>> {
    let appended =
        [tag::HISTORY, tag::NEW_ORDER, tag::ORDER, tag::CUSTOMER_LAST_ORDER, tag::ORDER_LINE];
    (1..=warehouses).flat_map(|w| appended.map(|t| table(w, t).finish())).collect()
}

/// How many bytes of an appended row's engine key name where it is appended: its warehouse,
/// table and district (as storage encodes them, for warehouses and districts below 256).
/// What the benchmark gives RocksDB as the insert hint of the tables kept apart
/// ([`embedded::Options::rocksdb_apart_hint_bytes`]), so that each district's next order
/// and order lines are inserted from where its last went.
pub fn appended_hint_bytes() -> usize {
    storage::StorageKey::versions_under(&table(1, tag::ORDER).u32(1).finish()).len()
}

/// Every key of warehouse `w`.
pub fn warehouse_range(w: u32) -> KeyRange {
    KeyRange::prefix(&warehouse_start(w))
}

/// WAREHOUSE (w).
pub fn warehouse_key(w: u32) -> Vec<u8> {
    table(w, tag::WAREHOUSE).finish()
}
/// W_YTD of warehouse `w`: a counter ([`txn::counter`]).
pub fn warehouse_ytd_key(w: u32) -> Vec<u8> {
    table(w, tag::WAREHOUSE_YTD).finish()
}
/// DISTRICT (w, d).
pub fn district_key(w: u32, d: u32) -> Vec<u8> {
    table(w, tag::DISTRICT).u32(d).finish()
}
/// D_YTD of district (w, d): a counter ([`txn::counter`]).
pub fn district_ytd_key(w: u32, d: u32) -> Vec<u8> {
    table(w, tag::DISTRICT_YTD).u32(d).finish()
}
/// D_NEXT_O_ID of district (w, d): a little-endian `u32`.
pub fn district_next_key(w: u32, d: u32) -> Vec<u8> {
    table(w, tag::DISTRICT_NEXT).u32(d).finish()
}
/// Every district of warehouse `w`.
pub fn districts(w: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::DISTRICT).finish())
}
/// CUSTOMER (w, d, c).
pub fn customer_key(w: u32, d: u32, c: u32) -> Vec<u8> {
    table(w, tag::CUSTOMER).u32(d).u32(c).finish()
}
/// Every customer of district (w, d).
pub fn customers(w: u32, d: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::CUSTOMER).u32(d).finish())
}
/// CUSTOMER (w, d, c): its balance and counters.
pub fn customer_balance_key(w: u32, d: u32, c: u32) -> Vec<u8> {
    table(w, tag::CUSTOMER_BALANCE).u32(d).u32(c).finish()
}
/// The balances of every customer of district (w, d).
pub fn customer_balances(w: u32, d: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::CUSTOMER_BALANCE).u32(d).finish())
}
/// The customer-by-last-name index's row of (w, d, `last`): every customer of the district
/// called so ([`Named`]).
pub fn customers_named_key(w: u32, d: u32, last: &str) -> Vec<u8> {
    table(w, tag::CUSTOMER_BY_NAME).u32(d).str(last).finish()
}
/// HISTORY (w, h_id): the specification gives history no key; `h_id` is unique per run.
pub fn history_key(w: u32, h_id: u64) -> Vec<u8> {
    table(w, tag::HISTORY).u64(h_id).finish()
}
/// Every HISTORY row of warehouse `w`.
pub fn histories(w: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::HISTORY).finish())
}
/// NEW-ORDER (w, d, o).
pub fn new_order_key(w: u32, d: u32, o: u32) -> Vec<u8> {
    table(w, tag::NEW_ORDER).u32(d).u32(o).finish()
}
/// Every new-order row of district (w, d), oldest first.
pub fn new_orders(w: u32, d: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::NEW_ORDER).u32(d).finish())
}
fn u32_at_end(key: &[u8]) -> u32 {
    u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"))
}

/// The order id that ends a NEW-ORDER or ORDER key.
pub fn order_id_at_end(key: &[u8]) -> u32 {
    u32_at_end(key)
}
/// The district's oldest undelivered order id (not in the specification's schema): Delivery
/// reads it instead of scanning NEW-ORDER from its start, which would walk every deleted row
/// still within MVCC retention.
pub fn delivery_cursor_key(w: u32, d: u32) -> Vec<u8> {
    table(w, tag::DELIVERY_CURSOR).u32(d).finish()
}
/// ORDER (w, d, o).
pub fn order_key(w: u32, d: u32, o: u32) -> Vec<u8> {
    table(w, tag::ORDER).u32(d).u32(o).finish()
}
/// Every order of district (w, d).
pub fn orders(w: u32, d: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::ORDER).u32(d).finish())
}
/// The id of customer (w, d, c)'s newest order (u32, little-endian), the one Order-Status
/// reads: an index with one entry a customer, read by key, where an index of all its orders
/// would be scanned for the first (a scan checks every sorted run a shard holds).
pub fn customer_last_order_key(w: u32, d: u32, c: u32) -> Vec<u8> {
    table(w, tag::CUSTOMER_LAST_ORDER).u32(d).u32(c).finish()
}
/// ORDER-LINE (w, d, o, n).
pub fn order_line_key(w: u32, d: u32, o: u32, n: u32) -> Vec<u8> {
    table(w, tag::ORDER_LINE).u32(d).u32(o).u32(n).finish()
}
/// The order lines of order (w, d, o).
pub fn order_lines(w: u32, d: u32, o: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::ORDER_LINE).u32(d).u32(o).finish())
}
/// Every order line of district (w, d).
pub fn district_order_lines(w: u32, d: u32) -> KeyRange {
    KeyRange::prefix(&table(w, tag::ORDER_LINE).u32(d).finish())
}
/// ITEM (i), warehouse `w`'s copy.
pub fn item_key(w: u32, i: u32) -> Vec<u8> {
    table(w, tag::ITEM).u32(i).finish()
}
/// STOCK (w, i): its counters.
pub fn stock_key(w: u32, i: u32) -> Vec<u8> {
    table(w, tag::STOCK).u32(i).finish()
}
/// STOCK (w, i): the rest of the row.
pub fn stock_info_key(w: u32, i: u32) -> Vec<u8> {
    table(w, tag::STOCK_INFO).u32(i).finish()
}

/// The parts of an address every addressed table has. `T` is the text's type: `String`, or
/// the row's bytes borrowed in a view ([`WarehouseView`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Address<T = String> {
    /// Street, first line.
    pub street_1: T,
    /// Street, second line.
    pub street_2: T,
    /// City.
    pub city: T,
    /// Two letters.
    pub state: T,
    /// Nine characters.
    pub zip: T,
}

/// WAREHOUSE (`T`: the text's type, as in [`Address`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Warehouse<T = String> {
    /// W_NAME.
    pub name: T,
    /// W_STREET_1 .. W_ZIP.
    pub address: Address<T>,
    /// W_TAX, basis points. (W_YTD is a counter of its own, [`warehouse_ytd_key`].)
    pub tax: i64,
}

/// DISTRICT, unchanged after the load (`T`: the text's type, as in [`Address`]). D_YTD is a
/// counter of its own ([`district_ytd_key`]), D_NEXT_O_ID a row of its own
/// ([`district_next_key`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct District<T = String> {
    /// D_NAME.
    pub name: T,
    /// D_STREET_1 .. D_ZIP.
    pub address: Address<T>,
    /// D_TAX, basis points.
    pub tax: i64,
}

/// CUSTOMER but its balance and counters ([`CustomerBalance`]) (`T`: the text's type, as in
/// [`Address`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Customer<T = String> {
    /// C_FIRST.
    pub first: T,
    /// C_MIDDLE.
    pub middle: T,
    /// C_LAST.
    pub last: T,
    /// C_STREET_1 .. C_ZIP.
    pub address: Address<T>,
    /// C_PHONE.
    pub phone: T,
    /// C_SINCE, microseconds.
    pub since: u64,
    /// C_CREDIT: "GC" or "BC".
    pub credit: T,
    /// C_CREDIT_LIM, cents.
    pub credit_lim: i64,
    /// C_DISCOUNT, basis points.
    pub discount: i64,
    /// C_DATA.
    pub data: T,
}

/// CUSTOMER's columns Payment and Delivery update ([`customer_balance_key`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomerBalance {
    /// C_BALANCE, cents.
    pub balance: i64,
    /// C_YTD_PAYMENT, cents.
    pub ytd_payment: i64,
    /// C_PAYMENT_CNT.
    pub payment_cnt: u32,
    /// C_DELIVERY_CNT.
    pub delivery_cnt: u32,
}

/// HISTORY.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct History {
    /// H_C_ID.
    pub c_id: u32,
    /// H_C_D_ID.
    pub c_d_id: u32,
    /// H_C_W_ID.
    pub c_w_id: u32,
    /// H_D_ID.
    pub d_id: u32,
    /// H_W_ID.
    pub w_id: u32,
    /// H_DATE, microseconds.
    pub date: u64,
    /// H_AMOUNT, cents.
    pub amount: i64,
    /// H_DATA.
    pub data: String,
}

/// ORDER.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Order {
    /// O_C_ID.
    pub c_id: u32,
    /// O_ENTRY_D, microseconds.
    pub entry_d: u64,
    /// O_CARRIER_ID, once delivered.
    pub carrier_id: Option<u32>,
    /// O_OL_CNT.
    pub ol_cnt: u32,
    /// O_ALL_LOCAL.
    pub all_local: bool,
}

/// ORDER-LINE.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderLine {
    /// OL_I_ID.
    pub i_id: u32,
    /// OL_SUPPLY_W_ID.
    pub supply_w_id: u32,
    /// OL_DELIVERY_D, microseconds, once delivered.
    pub delivery_d: Option<u64>,
    /// OL_QUANTITY.
    pub quantity: u32,
    /// OL_AMOUNT, cents.
    pub amount: i64,
    /// OL_DIST_INFO.
    pub dist_info: String,
}

/// ITEM (`T`: the text's type, as in [`Address`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item<T = String> {
    /// I_IM_ID.
    pub im_id: u32,
    /// I_NAME.
    pub name: T,
    /// I_PRICE, cents.
    pub price: i64,
    /// I_DATA.
    pub data: T,
}

/// The customer-by-last-name index's row ([`customers_named_key`]): the customers of one
/// district with one last name, by first name, then id (`T`: the text's type, as in
/// [`Address`]). Names never change, so the loader writes it and nothing else does; Payment
/// and Order-Status by name read it as one row (a point read the row cache answers) rather
/// than scanning an entry per customer (a seek in every sorted run of RocksDB's; see the
/// README).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Named<T = String> {
    /// (C_FIRST, C_ID), sorted.
    pub customers: Vec<(T, u32)>,
}

/// See [`WarehouseView`].
pub type NamedView<'a> = Named<&'a [u8]>;

impl Named {
    /// Adds customer `c`, called `first`, in its place.
    pub fn insert(&mut self, first: &str, c: u32) {
        let entry = (first.to_string(), c);
        let at = self.customers.partition_point(|e| *e < entry);
        self.customers.insert(at, entry);
    }
}

impl NamedView<'_> {
    /// The customer TPC-C picks of those named so (clause 2.5.2.2): the one at position
    /// n / 2 rounded up, counted from 1, in first-name order.
    pub fn middle(&self) -> Option<u32> {
        let n = self.customers.len();
        (n > 0).then(|| self.customers[n.div_ceil(2) - 1].1)
    }
}

/// STOCK's counters: the columns New-Order updates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stock {
    /// S_QUANTITY.
    pub quantity: i64,
    /// S_YTD.
    pub ytd: i64,
    /// S_ORDER_CNT.
    pub order_cnt: u32,
    /// S_REMOTE_CNT.
    pub remote_cnt: u32,
}

/// The rest of STOCK, unchanged after the load (`T`: the text's type, as in [`Address`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StockInfo<T = String> {
    /// S_DIST_01 .. S_DIST_10.
    pub dist: Vec<T>,
    /// S_DATA.
    pub data: T,
}

/// The rows New-Order reads and does not write, decoded with their text borrowed from the
/// row's bytes ([`view`]): no allocation, copy or UTF-8 check per column (text is read as
/// bytes; postcard encodes a `&[u8]` as it does a `str`). New-Order reads ten items and ten
/// stock rows a call, and the customer's text alone is up to 600 bytes.
pub type WarehouseView<'a> = Warehouse<&'a [u8]>;
/// See [`WarehouseView`].
pub type DistrictView<'a> = District<&'a [u8]>;
/// See [`WarehouseView`].
pub type CustomerView<'a> = Customer<&'a [u8]>;
/// See [`WarehouseView`].
pub type ItemView<'a> = Item<&'a [u8]>;
/// See [`WarehouseView`].
pub type StockInfoView<'a> = StockInfo<&'a [u8]>;

/// Encodes a row (or a procedure's arguments: the same format).
pub fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    // Sized first: growing the buffer as it is written reallocates several times a row.
    let size = postcard::experimental::serialized_size(row).expect("rows always serialize");
    postcard::to_extend(row, Vec::with_capacity(size)).expect("rows always serialize")
}

/// Decodes a row, naming the table on failure.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    view(bytes)
}

/// Decodes a row that may borrow from `bytes` (the views above), naming the table on failure.
pub fn view<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes)
        .map_err(|e| format!("corrupt {} row: {e}", std::any::type_name::<T>()))
}
