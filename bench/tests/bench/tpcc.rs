//! The TPC-C-like benchmark end to end on an embedded database: a short run passes the
//! consistency conditions, and the checks catch a database changed behind the transactions'
//! backs. The same short run on a cluster of `bench node` processes. Input generation follows
//! the specification's distributions.

use std::time::Duration;

use bench::tpcc::random::{self, Population};
use bench::tpcc::schema::{self, encode};
use bench::tpcc::{Backend, Generator, Kind, Mix, Sealdb, TpccOptions, drive};
use rand::SeedableRng;
use rand::rngs::StdRng;
use txn::ReadAt;

const SMALL: Population = Population { items: 2_000, customers: 120 };

fn options(warehouses: u32, clients: u32, secs: u64) -> TpccOptions {
    TpccOptions {
        warehouses,
        clients,
        duration: Duration::from_secs(secs),
        mix: Mix::Standard,
        population: SMALL,
        seed: 11,
        report_every: Duration::from_secs(5),
        backup_after: None,
        warmup: Duration::ZERO,
    }
}

/// About 1% of New-Orders name an unused item and roll back (TPC-C 2.4.1.4): the run must
/// have rolled some back, and not many more.
fn assert_rollbacks_about_one_percent(report: &bench::tpcc::Report) {
    let new_orders = report.latency_ms["new_order"].count as f64;
    assert!(new_orders >= 500.0, "too few New-Orders ({new_orders}) to check rollbacks");
    let share = report.rollbacks as f64 / new_orders;
    assert!((0.002..0.03).contains(&share), "{} rollbacks of {new_orders}", report.rollbacks);
}

fn loaded(warehouses: u32, dir: &std::path::Path) -> Sealdb {
    let backend = Sealdb::open(Some(dir), warehouses, warehouses).unwrap();
    backend.load(warehouses, SMALL, 11).unwrap();
    assert!(backend.check(warehouses).unwrap().is_empty(), "the loaded database is consistent");
    backend
}

#[test]
fn a_short_standard_run_passes_the_consistency_checks() {
    let dir = tempfile::tempdir().unwrap();
    let backend = loaded(1, dir.path());
    let report = drive(&backend, &options(1, 4, 10), 0.0).unwrap();
    eprintln!("{report:#?}");
    assert!(report.consistency, "{:?}", report.consistency_failures);
    for kind in ["new_order", "payment", "order_status", "delivery", "stock_level"] {
        let ran = report.latency_ms.get(kind).map_or(0, |l| l.count);
        assert!(ran > 0, "no {kind} ran");
    }
    assert!(report.scaled);
    assert!(report.tpmc > 0.0);
    assert_rollbacks_about_one_percent(&report);
}

/// A backup taken while clients run (`--backup-after`), restored into a new directory and
/// opened: the consistency conditions hold on it, and it has at least every New-Order
/// acknowledged before the backup began.
#[test]
fn a_backup_under_load_restores_consistent_with_every_acknowledged_new_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TpccOptions {
        mix: Mix::NewOrderPayment,
        backup_after: Some(Duration::from_secs(2)),
        ..options(2, 4, 5)
    };
    // Its clients are threads making blocking calls (`--driver threads`); the other runs'
    // are tasks (the default).
    let embedded = bench::tpcc::Embedded {
        dir: Some(dir.path().join("db")),
        shards: Some(2),
        driver: bench::Driver::Threads,
        ..Default::default()
    };
    let report = bench::tpcc::run_sealdb(&opts, &embedded).unwrap();
    let backup = report.backup.expect("a backup was taken");
    eprintln!("{backup:?}");
    assert!(backup.acked_new_orders > 0, "{backup:?}");
    assert!(backup.restored_new_orders >= backup.acked_new_orders, "{backup:?}");
    assert!(backup.restored_failures.is_empty(), "{backup:?}");
    assert!(report.consistency, "{:?}", report.consistency_failures);
}

#[test]
fn a_short_run_on_a_cluster_of_processes_passes_the_consistency_checks() {
    let dir = tempfile::tempdir().unwrap();
    // Two warehouses on two shards of two replicas each: remote lines and payments cross the
    // network, and each shard's calls go to either replica.
    let local = node::LocalProcesses::spawn(&node::LocalSpec {
        sequencers: 1,
        command: vec![env!("CARGO_BIN_EXE_bench").into(), "node".into()],
        dir: dir.path().to_path_buf(),
        shards: 2,
        replicas: 2,
        port: None,
        max_offset_ms: 1,
        window_ms: 2,
        split_keys: bench::tpcc::shard_map(2, 2).splits().to_vec(),
        group_timing: None,
        run_as: None,
        tls_dir: None,
        reclamation: None,
        storage_mib: None,
        worker_threads: None,
    })
    .unwrap();
    let target = bench::ClusterTarget::Addr(local.sequencer.clone());
    // The storage settings are for a cluster the benchmark starts; this one runs with its
    // nodes' own.
    let (rows, blocks, files) = (bench::tpcc::ROW_CACHE_BYTES, 256 << 20, 8 << 20);
    let report =
        bench::tpcc::cluster::run_cluster(&options(2, 4, 5), &target, rows, blocks, files).unwrap();
    // Each shard's two replicas applied the same windows and wrote the same.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let clock = clock::Clock::system(std::time::Duration::from_millis(1));
    let patience = std::time::Duration::from_secs(20);
    let agreed = runtime
        .block_on(client::replicas_converged(&local.sequencer, &clock, None, patience))
        .unwrap();
    assert_eq!(agreed.len(), 2, "{agreed:?}");
    assert!(agreed.iter().all(|(_, window, _)| *window > 0), "{agreed:?}");
    local.stop();
    assert_eq!(report.backend, "sealdb-cluster");
    assert!(report.consistency, "{:?}", report.consistency_failures);
    for kind in ["new_order", "payment", "order_status", "delivery", "stock_level"] {
        let ran = report.latency_ms.get(kind).map_or(0, |l| l.count);
        assert!(ran > 0, "no {kind} ran");
    }
}

#[test]
fn the_checks_catch_changes_made_behind_the_transactions_backs() {
    let dir = tempfile::tempdir().unwrap();
    // Two warehouses on two shards: remote New-Order lines and Payments cross shards.
    let backend = loaded(2, dir.path());
    let report = drive(&backend, &options(2, 4, 3), 0.0).unwrap();
    assert!(report.consistency, "{:?}", report.consistency_failures);
    let db = &backend.db;

    // Condition 1: one district's YTD changed directly.
    db.transact(|tx| {
        let key = schema::district_ytd_key(2, 3);
        let ytd = txn::counter(&key, tx.get(&key)?.as_deref()).unwrap();
        tx.put(&key, &(ytd + 1).to_le_bytes())
    })
    .unwrap();
    let failures = backend.check(2).unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with("condition 1: warehouse 2:"), "{failures:?}");

    // Condition 4: an order line removed from warehouse 1, district 5.
    let line = db
        .snapshot(ReadAt::Latest)
        .unwrap()
        .scan(&schema::district_order_lines(1, 5), 1)
        .unwrap()
        .remove(0)
        .0;
    db.transact(|tx| tx.delete(&line)).unwrap();
    let failures = backend.check(2).unwrap();
    assert!(
        failures.iter().any(|f| f.starts_with("condition 4: warehouse 1 district 5:")),
        "{failures:?}"
    );

    // Condition 3: a hole in warehouse 1 district 7's new-order rows.
    let rows = db.snapshot(ReadAt::Latest).unwrap().scan(&schema::new_orders(1, 7), 3).unwrap();
    assert_eq!(rows.len(), 3, "district 7 has undelivered orders");
    db.transact(|tx| tx.delete(&rows[1].0)).unwrap();
    let failures = backend.check(2).unwrap();
    assert!(
        failures.iter().any(|f| f.starts_with("condition 3: warehouse 1 district 7:")),
        "{failures:?}"
    );
}

/// Every customer's balance and counters agree with the rows its Payments and Deliveries
/// left elsewhere, by TPC-C's consistency conditions 7, 10 and 12 (clause 3.3.2): an order
/// has a carrier exactly when each of its lines has a delivery date; C_BALANCE is
/// the sum of the customer's delivered order lines' amounts less the sum of its HISTORY
/// amounts, and C_BALANCE + C_YTD_PAYMENT that sum of delivered amounts; C_PAYMENT_CNT counts
/// its HISTORY rows (one loaded, one a Payment) and C_DELIVERY_CNT its orders delivered in
/// the run; and Order-Status finds as many lines of a customer's last order as the table
/// has. Two warehouses on two shards, so remote Payments cross them.
#[test]
fn customer_balances_agree_with_history_and_delivered_order_lines() {
    use std::collections::HashMap;

    use bench::tpcc::txns::{CustomerRef, OrderStatus, StockLevel, order_status, stock_level};
    use schema::{CustomerBalance, History, Order, OrderLine, Stock, decode};

    let dir = tempfile::tempdir().unwrap();
    let backend = loaded(2, dir.path());
    let report = drive(&backend, &options(2, 4, 4), 0.0).unwrap();
    assert!(report.consistency, "{:?}", report.consistency_failures);
    let deliveries = report.latency_ms.get("delivery").map_or(0, |l| l.count);
    assert!(deliveries > 0 && report.latency_ms["payment"].count > 100, "{report:#?}");

    let snapshot = backend.db.snapshot(ReadAt::Latest).unwrap();
    let scan = |range| snapshot.scan(&range, usize::MAX).unwrap();
    let mut status = backend.db.snapshot(ReadAt::Latest).unwrap();
    // (w, d, c) -> (amounts paid, HISTORY rows), from every warehouse's history.
    let mut paid: HashMap<(u32, u32, u32), (i64, u32)> = HashMap::new();
    for w in 1..=2 {
        for (_, value) in scan(schema::histories(w)) {
            let h: History = decode(&value).unwrap();
            let entry = paid.entry((h.c_w_id, h.c_d_id, h.c_id)).or_default();
            *entry = (entry.0 + h.amount, entry.1 + 1);
        }
    }
    let first_new = SMALL.customers - SMALL.new_orders() + 1;
    let mut checked = 0;
    for w in 1..=2 {
        for d in 1..=10 {
            let orders: HashMap<u32, Order> = scan(schema::orders(w, d))
                .into_iter()
                .map(|(key, value)| (schema::order_id_at_end(&key), decode(&value).unwrap()))
                .collect();
            // (c) -> (delivered amounts, orders delivered in the run).
            let mut delivered: HashMap<u32, (i64, u32)> = HashMap::new();
            for (o, order) in &orders {
                if order.carrier_id.is_some() && *o >= first_new {
                    delivered.entry(order.c_id).or_default().1 += 1;
                }
            }
            for (key, value) in scan(schema::district_order_lines(w, d)) {
                let line: OrderLine = decode(&value).unwrap();
                let o = u32::from_be_bytes(key[key.len() - 8..key.len() - 4].try_into().unwrap());
                let order = &orders[&o];
                let at = format!("warehouse {w} district {d} order {o}: {order:?}, {line:?}");
                assert_eq!(
                    line.delivery_d.is_some(),
                    order.carrier_id.is_some(),
                    "condition 7, {at}"
                );
                if line.delivery_d.is_some() {
                    delivered.entry(order.c_id).or_default().0 += line.amount;
                }
            }
            // Order-Status counts the lines of a customer's last order as the table holds them.
            for c in 1..=5 {
                let last =
                    orders.iter().filter(|(_, order)| order.c_id == c).map(|(o, _)| *o).max();
                let lines = last.map_or(0, |o| scan(schema::order_lines(w, d, o)).len());
                let t = OrderStatus { w, d, customer: CustomerRef::Id(c) };
                assert_eq!(order_status(&mut status, &t).unwrap(), lines, "({w}, {d}, {c})");
                // The same as a read-only call (as a cluster runs it).
                let called = status.call("tpcc.order_status", &schema::encode(&t)).unwrap();
                assert_eq!(called, (lines as u64).to_le_bytes(), "({w}, {d}, {c}) called");
            }
            // Stock-Level counts the distinct items of the district's last 20 orders, as a
            // scan of their lines finds them, whose stock is below the threshold.
            let next = snapshot.get(&schema::district_next_key(w, d)).unwrap().unwrap();
            let next = u32::from_le_bytes(next.try_into().unwrap());
            let items: std::collections::BTreeSet<u32> = (next - 20..next)
                .flat_map(|o| scan(schema::order_lines(w, d, o)))
                .map(|(_, value)| decode::<OrderLine>(&value).unwrap().i_id)
                .collect();
            let quantities: Vec<i64> = items
                .iter()
                .map(|&i| {
                    let stock = snapshot.get(&schema::stock_key(w, i)).unwrap().unwrap();
                    decode::<Stock>(&stock).unwrap().quantity
                })
                .collect();
            for threshold in [10, 15, 20] {
                let low = quantities.iter().filter(|&&q| q < threshold).count();
                let t = StockLevel { w, d, threshold };
                assert_eq!(stock_level(&mut status, &t).unwrap(), low, "({w}, {d}, {threshold})");
                let called = status.call("tpcc.stock_level", &schema::encode(&t)).unwrap();
                assert_eq!(called, (low as u64).to_le_bytes(), "({w}, {d}, {threshold}) called");
            }
            let balances = scan(schema::customer_balances(w, d));
            assert_eq!(balances.len(), SMALL.customers as usize, "warehouse {w} district {d}");
            for (key, value) in balances {
                let c = schema::order_id_at_end(&key);
                assert_eq!(key, schema::customer_balance_key(w, d, c));
                let b: CustomerBalance = decode(&value).unwrap();
                let (amounts, lines) = delivered.get(&c).copied().unwrap_or_default();
                let (payments, rows) = paid.get(&(w, d, c)).copied().unwrap_or_default();
                let who = format!("customer ({w}, {d}, {c}): {b:?}");
                assert_eq!(b.balance, amounts - payments, "condition 10, {who}");
                assert_eq!(b.balance + b.ytd_payment, amounts, "condition 12, {who}");
                assert_eq!(b.payment_cnt, rows, "{who}");
                assert_eq!(b.delivery_cnt, lines, "{who}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 10 * SMALL.customers);
}

/// The customer-by-last-name index holds, for each district and last name, exactly the
/// customers the customer table has of that name, by first name then id, though the loader
/// writes a district's customers in several slices; and a lookup by name finds the one TPC-C
/// picks, counted against the table itself.
#[test]
fn the_name_index_lists_the_customer_tables_names_across_load_slices() {
    use std::collections::BTreeMap;

    use bench::tpcc::txns::{CustomerRef, find_customer};
    use storage::KeyRange;
    use storage::keycode::KeyEncoder;

    let dir = tempfile::tempdir().unwrap();
    let backend = Sealdb::open(Some(dir.path()), 1, 1).unwrap();
    // 1,100 customers a district: three loader slices (500, 500, 100).
    let pop = Population { items: 2_000, customers: 1_100 };
    backend.load(1, pop, 11).unwrap();
    let db = &backend.db;
    let mut snapshot = db.snapshot(ReadAt::Latest).unwrap();
    for d in [1, 10] {
        let mut by_name: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
        let rows = snapshot.scan(&schema::customers(1, d), usize::MAX).unwrap();
        assert_eq!(rows.len(), 1_100);
        for (c, (_, value)) in (1..).zip(&rows) {
            let customer: schema::Customer = schema::decode(value).unwrap();
            by_name.entry(customer.last).or_default().push((customer.first, c));
        }
        let index = KeyEncoder::new().u32(1).u8(schema::tag::CUSTOMER_BY_NAME).u32(d).finish();
        let index_rows = snapshot.scan(&KeyRange::prefix(&index), usize::MAX).unwrap();
        assert_eq!(index_rows.len(), by_name.len(), "one index row per last name");
        for (last, mut customers) in by_name {
            customers.sort();
            let key = schema::customers_named_key(1, d, &last);
            let row: schema::Named = schema::decode(&snapshot.get(&key).unwrap().unwrap()).unwrap();
            assert_eq!(row.customers, customers, "district {d}, {last}");
            let middle = customers[customers.len().div_ceil(2) - 1].1;
            let (found, customer) =
                find_customer(&mut snapshot, 1, d, &CustomerRef::Last(last.clone())).unwrap();
            assert_eq!((found, customer.last), (middle, last));
        }
    }
    let missing = find_customer(&mut snapshot, 1, 1, &CustomerRef::Last("NOBODY".into()));
    assert!(missing.is_err(), "a name no customer has aborts");
}

/// The rows New-Order and Payment only read are decoded as views that borrow their text as bytes
/// (`schema::WarehouseView` and the rest: the same types with `&[u8]` for `String`): each
/// view must read every row its owned form encodes, field for field, or New-Order would
/// compute from the wrong columns. Rows of random text and numbers (seeded; the seed is
/// printed).
#[test]
fn the_rows_new_order_only_reads_decode_as_their_views() {
    use schema::{Address, Customer, CustomerView, District, DistrictView, Item, ItemView};
    use schema::{StockInfo, StockInfoView, Warehouse, WarehouseView, view};
    let seed = 20261203;
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let text = |rng: &mut StdRng| random::astring(rng, 0, 40);
    let same_address = |a: &Address, v: &Address<&[u8]>| {
        (a.street_1.as_bytes(), a.street_2.as_bytes(), a.city.as_bytes(), a.state.as_bytes())
            == (v.street_1, v.street_2, v.city, v.state)
            && a.zip.as_bytes() == v.zip
    };
    for _ in 0..200 {
        let address = Address {
            street_1: text(&mut rng),
            street_2: text(&mut rng),
            city: text(&mut rng),
            state: text(&mut rng),
            zip: random::zip(&mut rng),
        };
        let n = |rng: &mut StdRng| rand::Rng::random_range(rng, -1_000_000i64..1_000_000);
        let w = Warehouse { name: text(&mut rng), address: address.clone(), tax: n(&mut rng) };
        let bytes = encode(&w);
        let v: WarehouseView = view(&bytes).unwrap();
        assert!(v.name == w.name.as_bytes() && same_address(&w.address, &v.address));
        assert_eq!(v.tax, w.tax);
        let d = District { name: text(&mut rng), address: address.clone(), tax: n(&mut rng) };
        let bytes = encode(&d);
        let v: DistrictView = view(&bytes).unwrap();
        assert!(v.name == d.name.as_bytes() && same_address(&d.address, &v.address));
        assert_eq!(v.tax, d.tax);
        let c = Customer {
            first: text(&mut rng),
            middle: text(&mut rng),
            last: text(&mut rng),
            address: address.clone(),
            phone: text(&mut rng),
            since: n(&mut rng).unsigned_abs(),
            credit: text(&mut rng),
            credit_lim: n(&mut rng),
            discount: n(&mut rng),
            data: random::astring(&mut rng, 300, 500),
        };
        let bytes = encode(&c);
        let v: CustomerView = view(&bytes).unwrap();
        assert_eq!(
            (v.first, v.middle, v.last),
            (c.first.as_bytes(), c.middle.as_bytes(), c.last.as_bytes())
        );
        assert!(same_address(&c.address, &v.address));
        assert_eq!(
            (v.phone, v.since, v.credit),
            (c.phone.as_bytes(), c.since, c.credit.as_bytes())
        );
        assert_eq!((v.credit_lim, v.discount), (c.credit_lim, c.discount));
        assert_eq!(v.data, c.data.as_bytes());
        let i = Item {
            im_id: n(&mut rng).unsigned_abs() as u32,
            name: text(&mut rng),
            price: n(&mut rng),
            data: text(&mut rng),
        };
        let bytes = encode(&i);
        let v: ItemView = view(&bytes).unwrap();
        assert_eq!(
            (v.im_id, v.name, v.price, v.data),
            (i.im_id, i.name.as_bytes(), i.price, i.data.as_bytes())
        );
        let s = StockInfo { dist: (0..10).map(|_| text(&mut rng)).collect(), data: text(&mut rng) };
        let bytes = encode(&s);
        let v: StockInfoView = view(&bytes).unwrap();
        assert_eq!(
            (v.dist, v.data),
            (s.dist.iter().map(String::as_bytes).collect(), s.data.as_bytes())
        );
    }
}

#[test]
fn last_names_follow_the_syllable_table() {
    assert_eq!(random::last_name(0), "BARBARBAR");
    assert_eq!(random::last_name(371), "PRICALLYOUGHT");
    assert_eq!(random::last_name(999), "EINGEINGEING");
}

#[test]
fn nurand_stays_in_range_and_is_skewed() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut counts = vec![0u32; 3_001];
    for _ in 0..300_000 {
        let c = random::nurand(&mut rng, 1023, 1, 3_000, random::C_ID);
        assert!((1..=3_000).contains(&c));
        counts[c as usize] += 1;
    }
    let max = *counts.iter().max().unwrap();
    assert!(max > 300, "uniform would give each id about 100; the hottest got {max}");
}

#[test]
fn the_standard_mix_and_its_inputs_follow_the_specification() {
    let mut generator = Generator::new(3, 0, 1, 4, Population::STANDARD, Mix::Standard);
    let n = 100_000;
    let (mut kinds, mut remote_lines, mut lines, mut rollbacks, mut remote_payments) =
        (std::collections::BTreeMap::new(), 0, 0, 0, 0);
    for _ in 0..n {
        let txn = generator.next_txn();
        *kinds.entry(txn.kind()).or_insert(0) += 1;
        match txn {
            bench::tpcc::Txn::NewOrder(t) => {
                assert!((5..=15).contains(&t.lines.len()));
                lines += t.lines.len();
                remote_lines += t.lines.iter().filter(|l| l.supply_w != 1).count();
                rollbacks += usize::from(t.lines.iter().any(|l| l.i_id > 100_000));
            }
            bench::tpcc::Txn::Payment(t) => remote_payments += usize::from(t.c_w != 1),
            _ => {}
        }
    }
    let share = |k: Kind| f64::from(kinds[&k]) / f64::from(n);
    assert!((share(Kind::NewOrder) - 0.45).abs() < 0.01);
    assert!((share(Kind::Payment) - 0.43).abs() < 0.01);
    for k in [Kind::OrderStatus, Kind::Delivery, Kind::StockLevel] {
        assert!((share(k) - 0.04).abs() < 0.005, "{k:?}: {}", share(k));
    }
    let new_orders = kinds[&Kind::NewOrder] as f64;
    assert!((rollbacks as f64 / new_orders - 0.01).abs() < 0.003, "{rollbacks} rollbacks");
    assert!((remote_lines as f64 / lines as f64 - 0.01).abs() < 0.003);
    assert!((remote_payments as f64 / f64::from(kinds[&Kind::Payment]) - 0.15).abs() < 0.01);
}

/// PostgreSQL for the comparison backend's tests: `./dev test` starts one with
/// `bench/postgres.sh` and sets `SEALDB_PG_URL`. Without it these tests print SKIPPED (CI sets
/// `SEALDB_REQUIRE_PG=1`, which makes that a failure).
fn postgres(schema: &str) -> Option<bench::tpcc::postgres::Postgres> {
    let Ok(url) = std::env::var("SEALDB_PG_URL") else {
        let required = std::env::var("SEALDB_REQUIRE_PG").is_ok_and(|v| v == "1");
        assert!(!required, "SEALDB_REQUIRE_PG=1 but SEALDB_PG_URL is not set");
        eprintln!("SKIPPED: SEALDB_PG_URL is not set (run the tests with ./dev test)");
        return None;
    };
    Some(bench::tpcc::postgres::Postgres::create(&url, schema, true).unwrap())
}

#[test]
fn postgres_loads_the_same_data_runs_the_mix_and_its_checks_can_fail() {
    let Some(pg) = postgres("tpcc_test_run") else { return };
    pg.load(2, SMALL, 11).unwrap();

    // The same loader: PostgreSQL starts from the data sealdb starts from.
    let dir = tempfile::tempdir().unwrap();
    let sealdb = loaded(2, dir.path());
    let (pg_w, pg_d) = pg.facts(2).unwrap();
    let (mut s_w, mut s_d) = sealdb.read(|s| bench::tpcc::check::facts(s, 2)).unwrap();
    s_d.iter_mut().for_each(|d| d.delivery_cursor = None);
    s_w.sort_by_key(|f| f.w);
    assert_eq!((pg_w, pg_d), (s_w, s_d));
    // STOCK, two keys a row in sealdb, is one row in PostgreSQL: the loader joins them.
    for (w, i) in [(1, 1), (1, SMALL.items), (2, 777)] {
        let (stock, info) = sealdb
            .read(|s| {
                let stock: schema::Stock = bench::tpcc::txns::row(s, &schema::stock_key(w, i))?;
                let info: schema::StockInfo =
                    bench::tpcc::txns::row(s, &schema::stock_info_key(w, i))?;
                Ok((stock, info))
            })
            .unwrap();
        let text = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let dist: Vec<String> = info.dist.iter().map(|d| text(d)).collect();
        pg.batch_execute(&format!(
            "DO $$ BEGIN IF (SELECT s_quantity = {} AND s_ytd = {} AND s_order_cnt = {} \
             AND s_remote_cnt = {} AND s_dist = ARRAY[{}] AND s_data = {} FROM stock \
             WHERE s_w_id = {w} AND s_i_id = {i}) IS NOT TRUE THEN \
             RAISE EXCEPTION 'stock ({w}, {i}) differs'; END IF; END $$",
            stock.quantity,
            stock.ytd,
            stock.order_cnt,
            stock.remote_cnt,
            dist.join(", "),
            text(&info.data),
        ))
        .unwrap();
    }

    let report = drive(&pg, &options(2, 4, 5), 0.0).unwrap();
    eprintln!("{report:#?}");
    assert_eq!(report.backend, "postgres");
    assert!(report.consistency, "{:?}", report.consistency_failures);
    for kind in ["new_order", "payment", "order_status", "delivery", "stock_level"] {
        let ran = report.latency_ms.get(kind).map_or(0, |l| l.count);
        assert!(ran > 0, "no {kind} ran");
    }
    assert_rollbacks_about_one_percent(&report);

    pg.batch_execute("UPDATE district SET d_ytd = d_ytd + 1 WHERE d_w_id = 2 AND d_id = 3")
        .unwrap();
    let failures = pg.check(2).unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with("condition 1: warehouse 2:"), "{failures:?}");

    pg.batch_execute(
        "DELETE FROM new_order WHERE no_w_id = 1 AND no_d_id = 7 AND no_o_id = \
         (SELECT min(no_o_id) + 1 FROM new_order WHERE no_w_id = 1 AND no_d_id = 7)",
    )
    .unwrap();
    let failures = pg.check(2).unwrap();
    assert!(
        failures.iter().any(|f| f.starts_with("condition 3: warehouse 1 district 7:")),
        "{failures:?}"
    );
}

#[test]
fn postgres_refuses_an_existing_schema_unless_told_to_replace_it() {
    let Some(_pg) = postgres("tpcc_test_exists") else { return };
    let url = std::env::var("SEALDB_PG_URL").unwrap();
    let refused = bench::tpcc::postgres::Postgres::create(&url, "tpcc_test_exists", false);
    let error = refused.err().expect("an existing schema is refused");
    assert!(error.contains("already exists"), "{error}");
    let bad = bench::tpcc::postgres::Postgres::create(&url, "tpcc; DROP", true);
    assert!(bad.err().expect("refused").contains("identifier"));
}

/// Storage flags would change nothing on a cluster the benchmark did not start: refused, with
/// no connection tried (nothing listens at the address).
#[test]
fn storage_flags_for_a_running_cluster_are_a_usage_error() {
    let run = |flag: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["tpcc", "--cluster", "127.0.0.1:9", flag, "64", "--duration", "1"])
            .output()
            .unwrap()
    };
    for flag in ["--row-cache-mib", "--block-cache-mib", "--rocksdb-file-mib"] {
        let out = run(flag);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("take them from their configuration"), "{flag}: {stderr}");
    }
}

/// `--held-run-mib` is bounded, and for the embedded database only: refused before anything
/// starts (nothing listens at the cluster's address).
#[test]
fn held_run_mib_out_of_bounds_or_for_a_cluster_is_a_usage_error() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["tpcc", "--duration", "1"])
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = run(&["--held-run-mib", "1025"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--held-run-mib must be at most 1024"), "{stderr}");
    let (code, stderr) = run(&["--held-run-mib", "0", "--cluster", "127.0.0.1:9"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("are for the embedded database"), "{stderr}");
}

/// The insert hint of the appended tables names one district: consecutive orders and order
/// lines of a district share it, and another district's (or warehouse's) differ in it.
#[test]
fn the_insert_hint_of_appended_rows_covers_warehouse_table_and_district() {
    let n = schema::appended_hint_bytes();
    let hint = |key: Vec<u8>| {
        let engine_key =
            storage::StorageKey::Version { key: &key, ts: clock::Timestamp::ZERO }.encode();
        engine_key[..n].to_vec()
    };
    for w in [1, 4, 255] {
        for d in [1, 10] {
            let same = hint(schema::order_key(w, d, 3001));
            assert_eq!(same, hint(schema::order_key(w, d, 3002)));
            assert_eq!(
                hint(schema::order_line_key(w, d, 7, 1)),
                hint(schema::order_line_key(w, d, 8, 15))
            );
            assert_ne!(same, hint(schema::order_key(w, d + 1, 3001)));
            assert_ne!(same, hint(schema::order_key(w + 1, d, 3001)));
            assert_ne!(same, hint(schema::order_line_key(w, d, 3001, 1)), "tables differ");
        }
    }
}
