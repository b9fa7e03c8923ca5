//! [`Coalescer`]: calls made at about the same time, sent as one request.
//!
//! A call joins a queue. One task takes the queue's head and everything behind it (up to a
//! count and a byte budget) as a batch, and sends it once one of a few slots for requests in
//! flight is free. So an idle client sends each call at once, alone, and a busy one sends
//! what piled up while its earlier requests were out: the per-request cost of gRPC (framing,
//! HTTP/2 streams, wake-ups on both sides) is paid per batch, not per call.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// How many calls may wait for a batch; more wait to join the queue.
const QUEUE: usize = 4096;

/// What makes a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most calls in one batch.
    pub items: usize,
    /// A batch stops growing once its items' sizes reach this (one item alone may exceed it).
    pub bytes: usize,
    /// Most batches in flight at once.
    pub in_flight: usize,
}

/// Sends calls of type `I`, coalesced into batches, and hands each its answer `O`.
pub(crate) struct Coalescer<I, O> {
    queue: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts the batching task on the current tokio runtime. `size` weighs an item against
    /// `limits.bytes`; `send` sends a batch and answers each of its items, in order.
    pub(crate) fn start<F, Fut>(limits: Limits, size: fn(&I) -> usize, send: F) -> Coalescer<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (queue, mut calls) = mpsc::channel::<(I, oneshot::Sender<O>)>(QUEUE);
        let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
        tokio::spawn(async move {
            while let Some(first) = calls.recv().await {
                // Wait for a slot before taking more: what arrives meanwhile joins this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut bytes = size(&first.0);
                let mut batch = vec![first];
                while batch.len() < limits.items && bytes < limits.bytes {
                    match calls.try_recv() {
                        Ok(call) => {
                            bytes += size(&call.0);
                            batch.push(call);
                        }
                        Err(_) => break,
                    }
                }
                let (items, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
                let sent = send(items);
                tokio::spawn(async move {
                    // An item without an answer finds its sender dropped.
                    for (answer, to) in sent.await.into_iter().zip(answers) {
                        let _ = to.send(answer);
                    }
                    drop(slot);
                });
            }
        });
        Coalescer { queue }
    }

    /// Sends `item` with whatever else is queued, and returns its answer (`None` if the
    /// batch's sender gave none: the client is shutting down).
    pub(crate) async fn call(&self, item: I) -> Option<O> {
        let (to, answer) = oneshot::channel();
        self.queue.send((item, to)).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The batches a coalescer sent, in order.
    type Sent<T> = Arc<Mutex<Vec<Vec<T>>>>;

    /// A coalescer whose batches are recorded and held until `release` is set, answering
    /// each item with `answer(item)`.
    fn held<T: Clone + Send + 'static>(
        limits: Limits,
        size: fn(&T) -> usize,
        answer: fn(T) -> T,
    ) -> (Coalescer<T, T>, Sent<T>, tokio::sync::watch::Sender<bool>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = batches.clone();
        let coalescer = Coalescer::start(limits, size, move |items: Vec<T>| {
            seen.lock().unwrap().push(items.clone());
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                items.into_iter().map(answer).collect()
            }
        });
        (coalescer, batches, release)
    }

    /// Queues `item` as [`Coalescer::call`] does, returning where its answer comes.
    async fn queue<T>(c: &Coalescer<T, T>, item: T) -> oneshot::Receiver<T> {
        let (to, answer) = oneshot::channel();
        c.queue.send((item, to)).await.unwrap();
        answer
    }

    /// Calls made while the only slot is busy go out together, each answered with its own.
    #[tokio::test]
    async fn calls_made_while_busy_share_a_batch() {
        let limits = Limits { items: 3, bytes: usize::MAX, in_flight: 1 };
        let (coalescer, batches, release) = held(limits, |_| 1, |i: u32| i * 10);
        let first = queue(&coalescer, 1).await;
        // The first call is out, holding the only slot, before the others are made.
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let mut rest = Vec::new();
        for i in 2..=6 {
            rest.push(queue(&coalescer, i).await);
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), 10);
        let mut answers = Vec::new();
        for r in rest {
            answers.push(r.await.unwrap());
        }
        assert_eq!(answers, [20, 30, 40, 50, 60]);
        // At most 3 a batch: one alone, then the five queued in two batches.
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 3, 2]);
    }

    /// A batch stops growing at its byte budget; an item over it goes alone.
    #[tokio::test]
    async fn a_batch_stops_at_its_byte_budget() {
        let limits = Limits { items: 100, bytes: 10, in_flight: 1 };
        let (coalescer, batches, release) = held(limits, |i: &usize| *i, |i| i);
        let first = queue(&coalescer, 1).await;
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let mut rest = Vec::new();
        for i in [4, 4, 4, 20, 1] {
            rest.push(queue(&coalescer, i).await);
        }
        release.send(true).unwrap();
        first.await.unwrap();
        for r in rest {
            r.await.unwrap();
        }
        // 4 + 4 + 4 reaches 10 at the third; 20 is over it alone; then 1.
        assert_eq!(*batches.lock().unwrap(), vec![vec![1], vec![4, 4, 4], vec![20], vec![1]]);
    }

    /// An idle coalescer sends each call at once, alone.
    #[tokio::test]
    async fn an_idle_call_goes_alone() {
        let limits = Limits { items: 10, bytes: usize::MAX, in_flight: 2 };
        let (coalescer, batches, release) = held(limits, |_| 1, |i: u8| i + 1);
        release.send(true).unwrap();
        assert_eq!(coalescer.call(1).await, Some(2));
        assert_eq!(coalescer.call(2).await, Some(3));
        assert_eq!(*batches.lock().unwrap(), vec![vec![1], vec![2]]);
    }
}
