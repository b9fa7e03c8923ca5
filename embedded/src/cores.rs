//! Where a database's threads run ([`Options::own_cores`](crate::Options::own_cores)): each
//! shard thread on a CPU of its own, the database's other threads on the CPUs left.
//!
//! A shard thread executes and applies every window of its shard, so its time a transaction
//! bounds the shard's throughput (on this project's two-core machine, the whole embedded
//! database's). Sharing its core, it was preempted about 3,000 times a second by the threads
//! its own work wakes (the sequencer, the answering thread, the clients) and by RocksDB's
//! background threads, and waited on the run queue for a fifth of its time (README, Figures,
//! "A core for the shard thread"). So, when asked and when the opening thread may use more
//! CPUs than there are shards, [`CorePlan`] reserves one CPU a shard (the last ones the
//! opening thread may use) and the rest for the database's other threads; RocksDB's
//! background threads are started before the database narrows itself, so they may run on
//! every CPU, at the lowest priority, in the time the shard threads leave. The application's
//! threads are its own: [`CorePlan::keep_off`] moves one off the shards' CPUs.

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// One CPU for each shard thread, and the CPUs for the database's other threads.
#[derive(Clone, Debug)]
pub(crate) struct CorePlan {
    /// Shard `i`'s CPU.
    shards: Vec<usize>,
    /// The CPUs no shard has.
    rest: CpuSet,
}

impl CorePlan {
    /// A CPU for each of `shards` shards and at least one left for the rest, from those the
    /// calling thread may use; `None` if it may use `shards` or fewer (or its set cannot be
    /// read).
    pub(crate) fn new(shards: usize) -> Option<CorePlan> {
        let cpus = cpus_of(&sched_getaffinity(None).ok()?);
        if cpus.len() <= shards {
            return None;
        }
        let (rest, own) = cpus.split_at(cpus.len() - shards);
        Some(CorePlan { shards: own.to_vec(), rest: set_of(rest) })
    }

    /// The CPU of shard `shard`.
    pub(crate) fn shard_cpu(&self, shard: usize) -> Option<usize> {
        self.shards.get(shard).copied()
    }

    /// Moves the calling thread to `shard`'s CPU. False if the system refused.
    pub(crate) fn pin_shard(&self, shard: usize) -> bool {
        self.shard_cpu(shard).is_some_and(|cpu| sched_setaffinity(None, &set_of(&[cpu])).is_ok())
    }

    /// Moves the calling thread off the shards' CPUs. False if the system refused.
    pub(crate) fn keep_off(&self) -> bool {
        sched_setaffinity(None, &self.rest).is_ok()
    }

    /// Moves the calling thread off the shards' CPUs until the guard is dropped, which puts
    /// it back on the CPUs it had: threads it starts meanwhile keep off them for good.
    pub(crate) fn narrow(&self) -> Narrowed {
        let before = sched_getaffinity(None).ok().filter(|_| self.keep_off());
        Narrowed { before }
    }
}

/// The calling thread kept off the shards' CPUs ([`CorePlan::narrow`]) until dropped.
pub(crate) struct Narrowed {
    before: Option<CpuSet>,
}

impl Drop for Narrowed {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            let _ = sched_setaffinity(None, before);
        }
    }
}

/// The CPUs in `set`, in order.
fn cpus_of(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
}

fn set_of(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<usize> {
        cpus_of(&sched_getaffinity(None).unwrap())
    }

    /// Runs `f` on a thread of its own, whose CPUs it may change.
    fn on_a_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn a_plan_needs_a_cpu_left_for_the_other_threads() {
        let n = allowed().len();
        assert!(CorePlan::new(n).is_none(), "{n} shards on {n} CPUs leave none for the rest");
        if n >= 2 {
            let plan = CorePlan::new(n - 1).unwrap();
            assert_eq!(plan.shards, allowed()[1..].to_vec());
            assert_eq!(plan.rest, set_of(&allowed()[..1]));
        }
    }

    #[test]
    fn a_shard_thread_runs_on_its_cpu_and_threads_started_while_narrowed_keep_off_it() {
        let cpus = allowed();
        if cpus.len() < 2 {
            eprintln!("one CPU: nothing to reserve");
            return;
        }
        let plan = CorePlan::new(1).unwrap();
        let shard_cpu = *cpus.last().unwrap();
        let pinned = on_a_thread({
            let plan = plan.clone();
            move || (plan.pin_shard(0), allowed())
        });
        assert_eq!(pinned, (true, vec![shard_cpu]));
        let (started, after) = on_a_thread(move || {
            let narrowed = plan.narrow();
            let started = on_a_thread(allowed);
            drop(narrowed);
            (started, allowed())
        });
        assert_eq!(started, cpus[..cpus.len() - 1].to_vec(), "a thread started while narrowed");
        assert_eq!(after, cpus, "the narrowed thread's CPUs once the guard is dropped");
    }
}
