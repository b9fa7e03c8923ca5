//! The `bench` command: parses flags, runs a workload, prints and optionally saves its report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "sealdb benchmark harness")]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

/// Flags every workload takes.
#[derive(clap::Args)]
struct RunArgs {
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Database directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Workload {
    /// The transaction engine on an embedded database: closed-loop clients for a duration.
    Micro {
        /// The transaction type.
        #[arg(long, value_enum, default_value = "increment")]
        workload: bench::micro::Workload,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: u32,
        /// Seconds to run.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Size of the key space.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Shards (default: one per core).
        #[arg(long)]
        shards: Option<u32>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Storage alone on RocksDB: apply windows, read back at timestamps, scan, GC, check.
    Mvcc {
        /// Windows to apply.
        #[arg(long, default_value_t = 2_000)]
        windows: u64,
        /// Writes per window.
        #[arg(long, default_value_t = 200)]
        writes: u64,
        /// Size of the key space.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        #[command(flatten)]
        run: RunArgs,
    },
}

fn main() -> ExitCode {
    match Cli::parse().workload {
        Workload::Micro {
            workload,
            clients,
            duration,
            keys,
            shards,
            run: RunArgs { seed, dir, json },
        } => {
            if clients == 0 || duration == 0 || keys < 2 || shards == Some(0) {
                eprintln!(
                    "error: --clients, --duration and --shards must be at least 1, --keys at least 2"
                );
                return ExitCode::from(2);
            }
            let duration = std::time::Duration::from_secs(duration);
            let opts =
                bench::micro::MicroOptions { workload, clients, duration, keys, shards, dir, seed };
            eprintln!(
                "micro: {workload:?}, {clients} clients, {keys} keys, {} s",
                duration.as_secs()
            );
            match bench::micro::run(&opts) {
                Ok(r) => {
                    println!("throughput_tps      {:>10.0}", r.throughput_tps);
                    println!("p50_ms              {:>10.3}", r.p50_ms);
                    println!("p99_ms              {:>10.3}", r.p99_ms);
                    println!("conflict_rate       {:>10.4}", r.conflict_rate);
                    println!("fallback_rate       {:>10.4}", r.fallback_rate);
                    println!("mean_window_entries {:>10.1}", r.mean_window_entries);
                    println!(
                        "committed           {:>10}  shards {}  consistent: {}",
                        r.committed, r.shards, r.consistent
                    );
                    if let Some(path) = json
                        && let Err(e) = bench::report::write_json(&path, &r)
                    {
                        eprintln!("error: writing {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    if r.consistent { ExitCode::SUCCESS } else { ExitCode::FAILURE }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Workload::Mvcc { windows, writes, keys, value_bytes, run: RunArgs { seed, dir, json } } => {
            if windows == 0 || writes == 0 || keys == 0 {
                eprintln!("error: --windows, --writes and --keys must be at least 1");
                return ExitCode::from(2);
            }
            let opts = bench::mvcc::Options { windows, writes, keys, value_bytes, seed, dir };
            eprintln!("mvcc: {windows} windows x {writes} writes over {keys} keys (seed {seed})");
            match bench::mvcc::run(&opts) {
                Ok(report) => {
                    println!("windows/s          {:>12.0}", report.windows_per_s);
                    println!("writes/s           {:>12.0}", report.writes_per_s);
                    println!(
                        "get latency ms     p50 {:.4}  p95 {:.4}  p99 {:.4}",
                        report.get.p50_ms, report.get.p95_ms, report.get.p99_ms
                    );
                    println!("scan keys/s        {:>12.0}", report.scan_keys_per_s);
                    println!(
                        "gc removed         {:>12} in {:.2} s",
                        report.gc_removed, report.gc_s
                    );
                    println!(
                        "checked reads      {:>12}  consistent: {}",
                        report.checked_reads, report.consistent
                    );
                    if let Some(path) = json
                        && let Err(e) = bench::report::write_json(&path, &report)
                    {
                        eprintln!("error: writing {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
