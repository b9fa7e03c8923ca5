//! The TPC-C benchmark on PostgreSQL, for a side-by-side comparison with sealdb.
//!
//! The same driver sends the same transaction inputs; each transaction is one call of a
//! PL/pgSQL function (`postgres.sql`) at SERIALIZABLE, retried on serialization failures and
//! deadlocks, so PostgreSQL, like sealdb, pays one round trip per transaction. The loader runs
//! sealdb's loader procedure against a context that collects its rows, then copies them in
//! with binary COPY: both databases start from identical data. The consistency conditions are
//! the same facts gathered with SQL, judged by [`check::failures`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use clock::Timestamp;
use storage::KeyRange;
use storage::keycode::KeyDecoder;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use txn::{Context, ProcError, Procedure, Rows};

use crate::tpcc::check::{self, DistrictFacts, WarehouseFacts};
use crate::tpcc::schema::{self, tag};
use crate::tpcc::txns::{self, CustomerRef, Load};
use crate::tpcc::{Backend, Done, Txn, random::Population};

const TABLES_SQL: &str = include_str!("postgres.sql");
const INDEXES_SQL: &str = include_str!("postgres_indexes.sql");

/// The SQLSTATE New-Order raises for its deliberate rollback on an unused item.
const ROLLBACK_STATE: &str = "TPC01";

/// PostgreSQL, over `tokio-postgres`.
pub struct Postgres {
    rt: tokio::runtime::Runtime,
    url: String,
    schema: String,
    idle: Mutex<Vec<Session>>,
}

/// One connection with the transactions' statements prepared.
struct Session {
    client: Client,
    new_order: Statement,
    payment: Statement,
    order_status: Statement,
    delivery: Statement,
    stock_level: Statement,
}

/// An error's SQLSTATE and message, or what went wrong on the way.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

async fn connect(url: &str, schema: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connecting to {url}: {}", describe(&e)))?;
    // The connection task ends when the client is dropped; its errors reach the client.
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "SET search_path TO {schema}; SET default_transaction_isolation TO 'serializable'"
        ))
        .await
        .map_err(|e| describe(&e))?;
    Ok(client)
}

impl Session {
    async fn open(url: &str, schema: &str) -> Result<Session, String> {
        let client = connect(url, schema).await?;
        let prepare = async |sql: &str| client.prepare(sql).await.map_err(|e| describe(&e));
        Ok(Session {
            new_order: prepare("SELECT new_order($1, $2, $3, $4, $5, $6)").await?,
            payment: prepare("SELECT payment($1, $2, $3, $4, $5, $6, $7, $8)").await?,
            order_status: prepare("SELECT order_status($1, $2, $3, $4)").await?,
            delivery: prepare("SELECT delivery($1, $2)").await?,
            stock_level: prepare("SELECT stock_level($1, $2, $3)").await?,
            client,
        })
    }

    /// Runs `txn` once, as one statement: one transaction at SERIALIZABLE.
    async fn run(&self, txn: &Txn) -> Result<(), tokio_postgres::Error> {
        let i = |v: u32| v as i32;
        fn customer(c: &CustomerRef) -> (i32, Option<&str>) {
            match c {
                CustomerRef::Id(c) => (*c as i32, None),
                CustomerRef::Last(last) => (0, Some(last.as_str())),
            }
        }
        let c = &self.client;
        match txn {
            Txn::NewOrder(t) => {
                let items: Vec<i32> = t.lines.iter().map(|l| i(l.i_id)).collect();
                let supply: Vec<i32> = t.lines.iter().map(|l| i(l.supply_w)).collect();
                let quantity: Vec<i32> = t.lines.iter().map(|l| i(l.quantity)).collect();
                c.query_one(
                    &self.new_order,
                    &[&i(t.w), &i(t.d), &i(t.c), &items, &supply, &quantity],
                )
                .await?;
            }
            Txn::Payment(t) => {
                let (id, last) = customer(&t.customer);
                let h_id = t.h_id as i64;
                c.query_one(
                    &self.payment,
                    &[&i(t.w), &i(t.d), &i(t.c_w), &i(t.c_d), &id, &last, &t.amount, &h_id],
                )
                .await?;
            }
            Txn::OrderStatus(t) => {
                let (id, last) = customer(&t.customer);
                c.query_one(&self.order_status, &[&i(t.w), &i(t.d), &id, &last]).await?;
            }
            Txn::Delivery(t) => {
                c.query_one(&self.delivery, &[&i(t.w), &i(t.carrier)]).await?;
            }
            Txn::StockLevel(t) => {
                c.query_one(&self.stock_level, &[&i(t.w), &i(t.d), &t.threshold]).await?;
            }
        }
        Ok(())
    }
}

impl Postgres {
    /// Connects to `url` and creates the tables and functions in a new schema `schema`. An
    /// existing schema of that name is refused, unless `replace` says to drop it first.
    pub fn create(url: &str, schema: &str, replace: bool) -> Result<Postgres, String> {
        if !is_identifier(schema) {
            return Err(format!("schema name {schema:?} must be a lower-case SQL identifier"));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = connect(url, "public").await?;
            let exists = client
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
                .await
                .map_err(|e| describe(&e))?
                .is_some();
            if exists && !replace {
                return Err(format!(
                    "schema {schema} already exists in {url}: drop it (DROP SCHEMA {schema} \
                     CASCADE) or pass --pg-replace"
                ));
            }
            let sql = format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
                 SET search_path TO {schema}; {TABLES_SQL}"
            );
            client.batch_execute(&sql).await.map_err(|e| describe(&e))
        })?;
        Ok(Postgres { rt, url: url.into(), schema: schema.into(), idle: Mutex::new(Vec::new()) })
    }

    /// A direct connection for statements the benchmark does not run (tests use it to
    /// corrupt data on purpose).
    pub fn batch_execute(&self, sql: &str) -> Result<(), String> {
        self.rt.block_on(async {
            let client = connect(&self.url, &self.schema).await?;
            client.batch_execute(sql).await.map_err(|e| describe(&e))
        })
    }

    /// The consistency conditions' facts of warehouses `1..=warehouses`, read in one
    /// REPEATABLE READ snapshot.
    pub fn facts(
        &self,
        warehouses: u32,
    ) -> Result<(Vec<WarehouseFacts>, Vec<DistrictFacts>), String> {
        let w = warehouses as i32;
        self.rt.block_on(async {
            let mut client = connect(&self.url, &self.schema).await?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| describe(&e))?;
            let warehouses = tx
                .query(
                    "SELECT w_id, w_ytd, (SELECT coalesce(sum(d_ytd), 0)::bigint FROM district \
                     WHERE d_w_id = w_id) FROM warehouse WHERE w_id <= $1 ORDER BY w_id",
                    &[&w],
                )
                .await
                .map_err(|e| describe(&e))?;
            let districts = tx
                .query(
                    "SELECT d_w_id, d_id, d_next_o_id,
                        (SELECT coalesce(max(o_id), 0) FROM orders
                            WHERE o_w_id = d_w_id AND o_d_id = d_id),
                        (SELECT min(no_o_id) FROM new_order
                            WHERE no_w_id = d_w_id AND no_d_id = d_id),
                        (SELECT max(no_o_id) FROM new_order
                            WHERE no_w_id = d_w_id AND no_d_id = d_id),
                        (SELECT count(*) FROM new_order
                            WHERE no_w_id = d_w_id AND no_d_id = d_id),
                        (SELECT coalesce(sum(o_ol_cnt), 0)::bigint FROM orders
                            WHERE o_w_id = d_w_id AND o_d_id = d_id),
                        (SELECT count(*) FROM order_line
                            WHERE ol_w_id = d_w_id AND ol_d_id = d_id)
                     FROM district WHERE d_w_id <= $1 ORDER BY d_w_id, d_id",
                    &[&w],
                )
                .await
                .map_err(|e| describe(&e))?;
            tx.commit().await.map_err(|e| describe(&e))?;
            let u = |v: i32| v as u32;
            let wf: Vec<WarehouseFacts> = warehouses
                .iter()
                .map(|r| WarehouseFacts { w: u(r.get(0)), ytd: r.get(1), district_ytd: r.get(2) })
                .collect();
            let df: Vec<DistrictFacts> = districts
                .iter()
                .map(|r| {
                    let (min, max): (Option<i32>, Option<i32>) = (r.get(4), r.get(5));
                    let count: i64 = r.get(6);
                    let (sum, lines): (i64, i64) = (r.get(7), r.get(8));
                    DistrictFacts {
                        w: u(r.get(0)),
                        d: u(r.get(1)),
                        next_o_id: u(r.get(2)),
                        max_o: u(r.get(3)),
                        new_orders: min.zip(max).map(|(a, b)| (u(a), u(b), count as u64)),
                        ol_cnt_sum: sum as u64,
                        lines: lines as u64,
                        delivery_cursor: None,
                    }
                })
                .collect();
            Ok((wf, df))
        })
    }

    fn session(&self) -> Result<Session, String> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(s) => Ok(s),
            None => self.rt.block_on(Session::open(&self.url, &self.schema)),
        }
    }
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn execute(&self, txn: &Txn, retries: &mut u64) -> Result<Done, String> {
        let session = self.session()?;
        let result = self.rt.block_on(async {
            let mut attempt = 0u32;
            loop {
                let Err(e) = session.run(txn).await else { return Ok(Done::Committed) };
                match e.code() {
                    Some(c) if c.code() == ROLLBACK_STATE => return Ok(Done::RolledBack),
                    Some(c)
                        if *c == SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == SqlState::T_R_DEADLOCK_DETECTED =>
                    {
                        *retries += 1;
                        // Retrying at once mostly meets the same conflict again and takes CPU
                        // from the transaction it lost to: back off, randomly, up to 10 ms.
                        let cap = 100u64 << attempt.min(7);
                        attempt += 1;
                        let wait = rand::random_range(0..=cap.min(10_000));
                        tokio::time::sleep(Duration::from_micros(wait)).await;
                    }
                    _ => return Err(format!("{}: {}", txn.kind().name(), describe(&e))),
                }
            }
        });
        if !session.client.is_closed() {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(session);
        }
        result
    }

    fn load(&self, warehouses: u32, pop: Population, seed: u64) -> Result<(), String> {
        // Four connections copy slices in; keys and indexes are built afterwards, in bulk.
        let parts = crate::tpcc::load_parts(warehouses, pop, seed);
        let now = Timestamp::from_unix_duration(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
        );
        let clients = Mutex::new(Vec::new());
        crate::tpcc::run_parts(&parts, 4, |part| {
            let client = clients.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let client = match client {
                Some(c) => c,
                None => self.rt.block_on(connect(&self.url, &self.schema))?,
            };
            self.rt.block_on(copy_part(&client, part, now))?;
            clients.lock().unwrap_or_else(|e| e.into_inner()).push(client);
            Ok(())
        })?;
        eprintln!("  building keys and indexes");
        self.rt.block_on(async {
            let client = connect(&self.url, &self.schema).await?;
            client.batch_execute(INDEXES_SQL).await.map_err(|e| describe(&e))?;
            // Statistics for the planner, and a checkpoint so the run does not start one.
            client.batch_execute("VACUUM ANALYZE").await.map_err(|e| describe(&e))?;
            client.batch_execute("CHECKPOINT").await.map_err(|e| describe(&e))
        })
    }

    fn check(&self, warehouses: u32) -> Result<Vec<String>, String> {
        let (wf, df) = self.facts(warehouses)?;
        let mut failed = check::failures(&wf, &df);
        let missing = warehouses as usize - wf.len();
        if missing > 0 {
            failed.insert(0, format!("{missing} warehouse row(s) missing"));
        }
        Ok(failed)
    }
}

/// A procedure context that records the loader's writes. The loader reads only the
/// customer-by-last-name rows other slices wrote, to add to them; here it finds none, and
/// PostgreSQL ignores those rows (it builds its own index on the customer table).
struct Collect {
    now: Timestamp,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Context for Collect {
    fn get(&mut self, _key: &[u8]) -> Result<Option<Vec<u8>>, ProcError> {
        Ok(None)
    }
    fn scan(&mut self, _range: &KeyRange, _limit: usize) -> Result<Rows, ProcError> {
        Ok(Vec::new())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), ProcError> {
        self.rows.push((key.to_vec(), value.to_vec()));
        Ok(())
    }
    fn delete(&mut self, _key: &[u8]) -> Result<(), ProcError> {
        Ok(())
    }
    fn now(&self) -> Timestamp {
        self.now
    }
}

type Value = Box<dyn ToSql + Send + Sync>;

/// The PostgreSQL tables, in the loader's order.
const TABLES: [(u8, &str, &[Type]); 9] = [
    (tag::WAREHOUSE, "warehouse", &[I, T, T, T, T, T, T, B, B]),
    (tag::DISTRICT, "district", &[I, I, T, T, T, T, T, T, B, B, I]),
    (tag::CUSTOMER, "customer", &[I, I, I, T, T, T, T, T, T, T, T, T, B, T, B, B, B, B, I, I, T]),
    (tag::HISTORY, "history", &[I, B, I, I, I, I, B, B, T]),
    (tag::NEW_ORDER, "new_order", &[I, I, I]),
    (tag::ORDER, "orders", &[I, I, I, I, B, I, I, Type::BOOL]),
    (tag::ORDER_LINE, "order_line", &[I, I, I, I, I, I, B, I, B, T]),
    (tag::ITEM, "item", &[I, I, I, T, B, T]),
    (tag::STOCK, "stock", &[I, I, B, Type::TEXT_ARRAY, B, I, I, T]),
];
const I: Type = Type::INT4;
const B: Type = Type::INT8;
const T: Type = Type::TEXT;

/// The parts of rows sealdb keeps apart, from the same loader slice, for joining onto their
/// rows: STOCK's unchanging columns by (warehouse, item), W_YTD and D_YTD by key, CUSTOMER's
/// balance by (warehouse, district, customer), D_NEXT_O_ID by (warehouse, district).
#[derive(Default)]
struct Parts {
    stock_infos: HashMap<(u32, u32), schema::StockInfo>,
    ytds: HashMap<Vec<u8>, i64>,
    balances: HashMap<(u32, u32, u32), schema::CustomerBalance>,
    nexts: HashMap<(u32, u32), u32>,
}

impl Parts {
    /// Keeps `key`'s value if it is a part of another row; says whether it was.
    fn keep(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let bad = |e: storage::keycode::DecodeError| format!("loader key {key:?}: {e}");
        let mut k = KeyDecoder::new(key);
        let (w, table) = (k.u32().map_err(bad)?, k.u8().map_err(bad)?);
        match table {
            tag::STOCK_INFO => {
                self.stock_infos.insert((w, k.u32().map_err(bad)?), schema::decode(value)?);
            }
            tag::WAREHOUSE_YTD | tag::DISTRICT_YTD => {
                let ytd = txn::counter(key, Some(value)).map_err(|e| e.to_string())?;
                self.ytds.insert(key.to_vec(), ytd);
            }
            tag::CUSTOMER_BALANCE => {
                let (d, c) = (k.u32().map_err(bad)?, k.u32().map_err(bad)?);
                self.balances.insert((w, d, c), schema::decode(value)?);
            }
            tag::DISTRICT_NEXT => {
                let next = txns::u32_value(Some(value.to_vec()), "D_NEXT_O_ID")
                    .map_err(|e| e.to_string())?;
                self.nexts.insert((w, k.u32().map_err(bad)?), next);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The first part no row took, if any.
    fn left(&self) -> Option<String> {
        let stock = self.stock_infos.keys().next().map(|(w, i)| format!("stock ({w}, {i})"));
        let ytd = self.ytds.keys().next().map(|key| format!("the year-to-date {key:?}"));
        let balance = self.balances.keys().next().map(|k| format!("the balance of customer {k:?}"));
        let next = self.nexts.keys().next().map(|k| format!("D_NEXT_O_ID of district {k:?}"));
        stock.or(ytd).or(balance).or(next)
    }
}

/// A loaded key and value as a PostgreSQL row: its table tag and columns. The indexes and the
/// delivery cursor have no row (PostgreSQL indexes the tables itself); the rows sealdb splits
/// ([`Parts`]) are joined again, at the key of the row they belong to.
fn columns(
    key: &[u8],
    value: &[u8],
    parts: &mut Parts,
) -> Result<Option<(u8, Vec<Value>)>, String> {
    fn v<T: ToSql + Send + Sync + 'static>(x: T) -> Value {
        Box::new(x)
    }
    fn addr(a: schema::Address) -> [Value; 5] {
        [v(a.street_1), v(a.street_2), v(a.city), v(a.state), v(a.zip)]
    }
    let i = |x: u32| v(x as i32);
    let bad = |e: storage::keycode::DecodeError| format!("loader key {key:?}: {e}");
    let mut k = KeyDecoder::new(key);
    let (w, table) = (k.u32().map_err(bad)?, k.u8().map_err(bad)?);
    let next = |k: &mut KeyDecoder| k.u32().map_err(bad);
    let missing = |what: &str| format!("loader wrote {key:?} without its {what}");
    let mut ytd = |at: Vec<u8>| parts.ytds.remove(&at).ok_or_else(|| missing("year-to-date"));
    let mut row = vec![i(w)];
    match table {
        tag::WAREHOUSE => {
            let r: schema::Warehouse = schema::decode(value)?;
            row.push(v(r.name));
            row.extend(addr(r.address));
            row.extend([v(r.tax), v(ytd(schema::warehouse_ytd_key(w))?)]);
        }
        tag::DISTRICT => {
            let r: schema::District = schema::decode(value)?;
            let d = next(&mut k)?;
            row.extend([i(d), v(r.name)]);
            row.extend(addr(r.address));
            let next_o_id = parts.nexts.remove(&(w, d)).ok_or_else(|| missing("D_NEXT_O_ID"))?;
            row.extend([v(r.tax), v(ytd(schema::district_ytd_key(w, d))?), i(next_o_id)]);
        }
        tag::CUSTOMER => {
            let r: schema::Customer = schema::decode(value)?;
            let (d, c) = (next(&mut k)?, next(&mut k)?);
            let b = parts.balances.remove(&(w, d, c)).ok_or_else(|| missing("balance"))?;
            row.extend([i(d), i(c), v(r.first), v(r.middle), v(r.last)]);
            row.extend(addr(r.address));
            row.extend([v(r.phone), v(r.since as i64), v(r.credit), v(r.credit_lim)]);
            row.extend([v(r.discount), v(b.balance), v(b.ytd_payment)]);
            row.extend([i(b.payment_cnt), i(b.delivery_cnt), v(r.data)]);
        }
        tag::HISTORY => {
            let r: schema::History = schema::decode(value)?;
            let h_id = k.u64().map_err(bad)? as i64;
            row.extend([v(h_id), i(r.c_id), i(r.c_d_id), i(r.c_w_id), i(r.d_id)]);
            row.extend([v(r.date as i64), v(r.amount), v(r.data)]);
        }
        tag::NEW_ORDER => row.extend([i(next(&mut k)?), i(next(&mut k)?)]),
        tag::ORDER => {
            let r: schema::Order = schema::decode(value)?;
            row.extend([i(next(&mut k)?), i(next(&mut k)?), i(r.c_id), v(r.entry_d as i64)]);
            row.extend([v(r.carrier_id.map(|c| c as i32)), i(r.ol_cnt), v(r.all_local)]);
        }
        tag::ORDER_LINE => {
            let r: schema::OrderLine = schema::decode(value)?;
            row.extend([
                i(next(&mut k)?),
                i(next(&mut k)?),
                i(next(&mut k)?),
                i(r.i_id),
                i(r.supply_w_id),
            ]);
            row.extend([v(r.delivery_d.map(|d| d as i64)), i(r.quantity), v(r.amount)]);
            row.push(v(r.dist_info));
        }
        tag::ITEM => {
            let r: schema::Item = schema::decode(value)?;
            row.extend([i(next(&mut k)?), i(r.im_id), v(r.name), v(r.price), v(r.data)]);
        }
        tag::STOCK => {
            let r: schema::Stock = schema::decode(value)?;
            let item = next(&mut k)?;
            let info = parts
                .stock_infos
                .remove(&(w, item))
                .ok_or_else(|| format!("loader wrote stock ({w}, {item}) without the rest"))?;
            row.extend([i(item), v(r.quantity), v(info.dist), v(r.ytd)]);
            row.extend([i(r.order_cnt), i(r.remote_cnt), v(info.data)]);
        }
        _ => return Ok(None),
    }
    Ok(Some((table, row)))
}

/// Generates one slice of the population with sealdb's loader and copies it in.
async fn copy_part(client: &Client, part: &Load, now: Timestamp) -> Result<(), String> {
    let mut ctx = Collect { now, rows: Vec::new() };
    txns::LoadProc.run(&mut ctx, &schema::encode(part)).map_err(|e| e.to_string())?;
    let mut by_table: Vec<Vec<Vec<Value>>> = TABLES.iter().map(|_| Vec::new()).collect();
    let mut parts = Parts::default();
    let mut rows = Vec::with_capacity(ctx.rows.len());
    for (key, value) in &ctx.rows {
        if !parts.keep(key, value)? {
            rows.push((key, value));
        }
    }
    for (key, value) in rows {
        if let Some((table, row)) = columns(key, value, &mut parts)? {
            let at = TABLES.iter().position(|t| t.0 == table).expect("every row's table is known");
            by_table[at].push(row);
        }
    }
    if let Some(part) = parts.left() {
        return Err(format!("loader wrote {part} without the row it belongs to"));
    }
    for ((_, name, types), rows) in TABLES.iter().zip(by_table) {
        if rows.is_empty() {
            continue;
        }
        let sink = client
            .copy_in(&format!("COPY {name} FROM STDIN (FORMAT binary)"))
            .await
            .map_err(|e| describe(&e))?;
        let writer = BinaryCopyInWriter::new(sink, types);
        let mut writer = std::pin::pin!(writer);
        for row in &rows {
            let values: Vec<&(dyn ToSql + Sync)> =
                row.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect();
            writer.as_mut().write(&values).await.map_err(|e| describe(&e))?;
        }
        writer.finish().await.map_err(|e| describe(&e))?;
    }
    Ok(())
}
