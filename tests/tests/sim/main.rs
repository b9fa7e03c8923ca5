//! A deterministic simulation of the cluster, and scenario tests of the window step.
//!
//! - `world`: a sequencer (even seeds) or a raft group of three sequencer members (odd seeds;
//!   `world::group`), three shards of two replicas and list-append and bank clients in one
//!   thread, on a seeded scheduler and simulated network with faults; each replica runs the
//!   same [`txn::Step`] as the embedded database and the shard server, each member the same
//!   `replication` code as a sequencer node.
//! - `invariants`: what every run must keep, one per file.
//! - `scenarios`: the step alone, as stories with the exact commands it returns.
//!
//! Seeds: `SEALDB_SIM_SEED=N` runs that one seed; otherwise `SEALDB_SIM_SEEDS` seeds (default
//! 200) from a random first one, printed (`SEALDB_SEED` fixes it). A failing seed prints
//! itself; `./dev sim --seed N` runs it again, exactly.

mod bank;
mod engine;
mod invariants;
mod scenarios;
mod world;

use std::time::Instant;

use world::{Bug, Config, Run, World};

fn env(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// The seeds to run: one, or many from a first.
fn seeds() -> Vec<u64> {
    if let Some(seed) = env("SEALDB_SIM_SEED") {
        return vec![seed];
    }
    let count = env("SEALDB_SIM_SEEDS").unwrap_or(200);
    let first = env("SEALDB_SEED").unwrap_or_else(|| rand::random::<u32>().into());
    eprintln!("simulating seeds {first}..{} (SEALDB_SEED={first} repeats them)", first + count);
    (first..first + count).collect()
}

fn simulate(config: Config) -> Run {
    World::new(config).run()
}

#[test]
fn every_invariant_holds_under_faults_on_every_seed() {
    let started = Instant::now();
    let mut total = world::Stats::default();
    let seeds = seeds();
    for &seed in &seeds {
        let run = simulate(Config::new(seed));
        if std::env::var_os("SEALDB_SIM_VERBOSE").is_some() {
            eprintln!("seed {seed}: {:?}", run.stats);
        }
        let broken = invariants::broken(&run);
        assert!(
            broken.is_empty(),
            "seed {seed} broke:\n  {}\nrun it again: ./dev sim --seed {seed}",
            broken.join("\n  ")
        );
        let s = run.stats;
        total.windows += s.windows;
        total.committed += s.committed;
        total.multi_shard_verdicts += s.multi_shard_verdicts;
        total.crashes += s.crashes;
        total.lost += s.lost;
        total.retries += s.retries;
        total.partitions += s.partitions;
        total.group_runs += s.group_runs;
        total.elections += s.elections;
        total.resubmits += s.resubmits;
        total.duplicates += s.duplicates;
    }
    eprintln!(
        "{} seeds in {:.1} s: {} windows, {} commits acknowledged, {} multi-shard verdicts, {} \
         crashes, {} replicas or members cut off, {} messages lost, {} requests retried; {} runs \
         with the sequencer group: {} elections, {} submissions sent again, {} found logged \
         already",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total.windows,
        total.committed,
        total.multi_shard_verdicts,
        total.crashes,
        total.partitions,
        total.lost,
        total.retries,
        total.group_runs,
        total.elections,
        total.resubmits,
        total.duplicates
    );
    // Each seed must have done real work, or the invariants prove nothing.
    assert!(total.committed > 20 * seeds.len() as u64, "{total:?}");
    assert!(total.multi_shard_verdicts > 0 && total.crashes > 0 && total.lost > 0, "{total:?}");
    assert!(total.partitions > 0, "{total:?}");
    // The group runs, and its leader changes (an election per run would be only the first).
    if seeds.len() > 1 {
        assert!(total.group_runs > 0 && total.resubmits > 0, "{total:?}");
        assert!(total.elections > total.group_runs, "{total:?}");
    }
}

/// With one sequencer (an even seed) and with the group (odd): the group's members run as
/// tasks on a paused tokio clock, and must not make a run depend on anything but its seed.
#[test]
fn a_run_is_a_function_of_its_seed() {
    let first = env("SEALDB_SIM_SEED").unwrap_or(7);
    for seed in [first, first + 1] {
        let (a, b) = (simulate(Config::new(seed)), simulate(Config::new(seed)));
        assert_eq!(a.history, b.history, "seed {seed}");
        assert_eq!(a.writes, b.writes, "seed {seed}");
        assert_eq!(a.verdicts, b.verdicts, "seed {seed}");
        assert_eq!(a.digests, b.digests, "seed {seed}");
        assert_eq!(a.final_lists, b.final_lists, "seed {seed}");
        assert_eq!(a.logged, b.logged, "seed {seed}");
        assert_eq!(a.promises, b.promises, "seed {seed}");
        assert_eq!(format!("{:?}", a.stats), format!("{:?}", b.stats), "seed {seed}");
    }
}

/// Each planted bug is caught by some invariant in some of a few seeds: the invariants can
/// fail. Prints how many seeds caught each.
#[test]
fn planted_bugs_are_caught() {
    let seeds = env("SEALDB_SIM_BUG_SEEDS").unwrap_or(12);
    for bug in [Bug::LocalVerdictOnly, Bug::LoseDurableWindow, Bug::LatestReads, Bug::UnloggedTicks]
    {
        let mut caught = 0;
        let mut by = std::collections::BTreeSet::new();
        for seed in 0..seeds {
            let mut config = Config::new(seed);
            config.bug = Some(bug);
            // Bugs of the one sequencer's shell, and of the group's.
            config.group = match bug {
                Bug::LoseDurableWindow => false,
                Bug::UnloggedTicks => true,
                _ => config.group,
            };
            let broken = invariants::broken(&simulate(config));
            if std::env::var_os("SEALDB_SIM_VERBOSE").is_some() {
                eprintln!("planted {bug:?}, seed {seed}: {broken:?}");
            }
            if !broken.is_empty() {
                caught += 1;
                by.extend(
                    broken.iter().map(|b| b.split(':').next().unwrap_or_default().to_string()),
                );
            }
        }
        eprintln!("planted {bug:?}: caught in {caught} of {seeds} seeds, by {by:?}");
        assert!(caught > 0, "{bug:?} was never caught in {seeds} seeds");
    }
}

/// Regression guard for a property, not a bug: a window applied again over its own writes
/// (its watermark lost, its writes kept) changes nothing, because the replay reads
/// `Snap(e-1)`, below them.
#[test]
fn a_window_applied_again_over_its_own_writes_changes_nothing() {
    for seed in 0..env("SEALDB_SIM_BUG_SEEDS").unwrap_or(12) {
        let mut config = Config::new(seed);
        config.bug = Some(Bug::TornWatermark);
        let broken = invariants::broken(&simulate(config));
        assert!(broken.is_empty(), "seed {seed}: {broken:?}");
    }
}
