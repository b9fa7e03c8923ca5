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

#[derive(Subcommand)]
enum Workload {
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
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Database directory (default: a temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().workload {
        Workload::Mvcc { windows, writes, keys, value_bytes, seed, dir, json } => {
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
