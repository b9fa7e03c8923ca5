//! [`Replicas`]: every shard's replicas, and which one each shard's calls go to now.
//!
//! A shard's replicas apply the same log on their own, deterministically, so any of them
//! answers a read at a timestamp, a window's verdicts or an outcome the same way (a replica
//! that is behind waits for its safe time). Calls to a shard stick to one replica and move on
//! to the next when it fails in a way another may not: unreachable, stopping, failed, or
//! silent for [`ATTEMPT`] (a paused process accepts connections and answers nothing). An
//! answer, refusals included, is the shard's, whichever replica gave it.
//!
//! A shard's replicas are written as one string, comma-separated (`"a0:7101,b0:7101"`), in
//! configuration, in the admin service's layout and in [`Cluster`](crate::Cluster).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clock::Clock;
use proto::v1::shard_client::ShardClient;
use sequencer::ShardId;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::tls::Tls;
use crate::wire::{RemoteError, SetupError, endpoint, observe_response, stamp};

/// How long one replica has to answer one call before the next replica is asked. A healthy
/// replica answers reads within its safe-time lag and verdicts within a window's execution;
/// a sequencer failover (about 2 s) may hold both, and then the caller only moves on.
pub const ATTEMPT: Duration = Duration::from_secs(2);

/// How long one replica has to answer before the next replica is asked the same as well.
pub const HEDGE: Duration = Duration::from_millis(300);

/// How long to wait before going round a shard's replicas again after each failed.
const ROUND_PAUSE: Duration = Duration::from_millis(20);

/// The replicas of every shard of a cluster.
pub struct Replicas {
    shards: Vec<Shard>,
}

struct Shard {
    addrs: Vec<String>,
    clients: Vec<ShardClient<Channel>>,
    /// The replica calls go to now.
    current: AtomicUsize,
}

impl Shard {
    /// Moves the shard's calls from replica `from` to `to`, unless another caller moved them
    /// from `from` already.
    fn hand_over(&self, from: usize, to: usize) {
        let _ = self.current.compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The replica addresses of one shard as configured (`"a,b"`): trimmed, none empty.
pub fn replica_addrs(shard: &str) -> Vec<String> {
    shard.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect()
}

/// Whether another replica may answer what this one failed to: it is unreachable, stopping,
/// failed, fenced or silent. Refusals, clock skew and "not found" are the shard's answer.
pub fn fails_over(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

impl Replicas {
    /// Clients of every replica of every shard (`shards[i]` lists shard `i`'s, comma-separated),
    /// connecting lazily. Shard `i`'s calls start on replica `(spread + i) % replicas`, so that
    /// callers with different `spread`s, and one caller's shards, do not all start on the same
    /// one.
    pub fn new(
        shards: &[String],
        tls: Option<&Tls>,
        spread: usize,
    ) -> Result<Replicas, SetupError> {
        let shards = shards
            .iter()
            .enumerate()
            .map(|(i, shard)| {
                let addrs = replica_addrs(shard);
                if addrs.is_empty() {
                    return Err(SetupError::Address {
                        addr: shard.clone(),
                        why: "a shard needs at least one replica address".into(),
                    });
                }
                let clients = addrs
                    .iter()
                    .map(|a| Ok(crate::sized!(ShardClient::new(endpoint(a, tls)?.connect_lazy()))))
                    .collect::<Result<Vec<_>, SetupError>>()?;
                let current = AtomicUsize::new(spread.wrapping_add(i) % addrs.len());
                Ok(Shard { addrs, clients, current })
            })
            .collect::<Result<_, _>>()?;
        Ok(Replicas { shards })
    }

    /// How many shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The addresses of `shard`'s replicas.
    pub fn addrs(&self, shard: ShardId) -> &[String] {
        &self.shards[shard.0 as usize].addrs
    }

    /// A client of replica `replica` of `shard`.
    pub fn client(&self, shard: ShardId, replica: usize) -> ShardClient<Channel> {
        self.shards[shard.0 as usize].clients[replica].clone()
    }

    /// The replica `shard`'s calls go to now, and a client of it.
    pub fn current(&self, shard: ShardId) -> (usize, ShardClient<Channel>) {
        let s = &self.shards[shard.0 as usize];
        let i = s.current.load(Ordering::Relaxed) % s.clients.len();
        (i, s.clients[i].clone())
    }

    /// Hands `shard`'s calls from replica `from` (which failed) to the next, unless another
    /// caller moved them already.
    pub fn move_on(&self, shard: ShardId, from: usize) {
        let s = &self.shards[shard.0 as usize];
        s.hand_over(from, (from + 1) % s.clients.len());
    }

    /// One call to `shard`'s current replica, for at most [`ATTEMPT`]; if it has not
    /// answered after `HEDGE` (300 ms), the same call to the next replica too, and the first
    /// answer wins (a paused replica then costs `HEDGE`, not [`ATTEMPT`]: otherwise its delay
    /// compounds, a window waiting on a peer while its caller waits on the window). The calls
    /// are reads and waits, so asking two replicas is harmless. A replica that fails in a way
    /// another may not, or is outrun by the next, hands the shard's calls to the next one.
    pub async fn attempt<T, F, Fut>(&self, shard: ShardId, mut call: F) -> Result<T, Status>
    where
        F: FnMut(ShardClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let s = &self.shards[shard.0 as usize];
        let n = s.clients.len();
        let i = s.current.load(Ordering::Relaxed) % n;
        let j = (i + 1) % n;
        let timed = |r: usize, fut: Fut| async move {
            match tokio::time::timeout(ATTEMPT, fut).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "replica {} of shard {} did not answer in {} s",
                    s.addrs[r],
                    shard.0,
                    ATTEMPT.as_secs()
                ))),
            }
        };
        let move_on = |from: usize, to: usize| s.hand_over(from, to);
        let first = timed(i, call(s.clients[i].clone()));
        let mut first = std::pin::pin!(first);
        let hedge = async {
            match n {
                1 => std::future::pending().await,
                _ => tokio::time::sleep(HEDGE).await,
            }
        };
        tokio::select! {
            answer = &mut first => {
                if matches!(&answer, Err(status) if fails_over(status)) {
                    move_on(i, j);
                }
                return answer;
            }
            () = hedge => {}
        }
        let second = timed(j, call(s.clients[j].clone()));
        let mut second = std::pin::pin!(second);
        let (mut first_failed, mut second_failed) = (None, None);
        loop {
            tokio::select! {
                answer = &mut first, if first_failed.is_none() => match answer {
                    Err(status) if fails_over(&status) => first_failed = Some(status),
                    answer => return answer,
                },
                answer = &mut second, if second_failed.is_none() => match answer {
                    Err(status) if fails_over(&status) => second_failed = Some(status),
                    answer => {
                        move_on(i, j);
                        return answer;
                    }
                },
            }
            match (first_failed.take(), second_failed.take()) {
                (Some(_), Some(last)) => {
                    move_on(i, (j + 1) % n);
                    return Err(last);
                }
                (a, b) => (first_failed, second_failed) = (a, b),
            }
        }
    }

    /// Calls `shard` (stamping each attempt with `clock` and observing the answer's stamp),
    /// going round its replicas until one answers, `give_up` resolves, or the answer is the
    /// shard's own refusal. `call` gets a client and the request's stamp and returns the
    /// answer with the response's stamp.
    pub async fn call<T, F, Fut>(
        &self,
        shard: ShardId,
        clock: &Clock,
        give_up: impl Future<Output = ()>,
        mut call: F,
    ) -> Result<T, RemoteError>
    where
        F: FnMut(ShardClient<Channel>, u64) -> Fut,
        Fut: Future<Output = Result<(T, u64), Status>>,
    {
        let replicas = self.shards[shard.0 as usize].clients.len();
        let mut give_up = std::pin::pin!(give_up);
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let attempt = self.attempt(shard, |c| call(c, stamp(clock)));
            let status = tokio::select! {
                answer = attempt => match answer {
                    Ok((answer, hlc)) => {
                        observe_response(clock, hlc)?;
                        return Ok(answer);
                    }
                    Err(status) if fails_over(&status) => status,
                    Err(status) => return Err(status.into()),
                },
                () = &mut give_up => {
                    return Err(RemoteError::Unavailable(format!(
                        "shard {}: no replica answered ({attempts} attempts)",
                        shard.0
                    )));
                }
            };
            // Say so once it has lasted, without flooding the log.
            if attempts == 10 || attempts.is_multiple_of(500) {
                tracing::warn!(shard = shard.0, attempts, %status, "shard call failing; retrying");
            } else {
                tracing::debug!(shard = shard.0, %status, "shard call failed; retrying");
            }
            if attempts.is_multiple_of(replicas) {
                tokio::select! {
                    () = tokio::time::sleep(ROUND_PAUSE) => {}
                    () = &mut give_up => {
                        return Err(RemoteError::Unavailable(format!(
                            "shard {}: no replica answered: {}",
                            shard.0,
                            status.message()
                        )));
                    }
                }
            }
        }
    }
}
