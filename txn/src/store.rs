//! [`Store`]: what the embedded [`Database`](crate::Database) and the cluster
//! [`Client`](crate::remote::Client) both offer, so code written against one runs against the
//! other.
//!
//! ```ignore
//! async fn bump<S: Store>(store: &S, key: &[u8]) -> Result<u64, TxnError> {
//!     store
//!         .transact(|mut tx| async move {
//!             let n = tx.get(key).await?.map_or(0, |v| v[0] as u64) + 1;
//!             tx.put(key, &[n as u8])?;
//!             Ok((tx, n))
//!         })
//!         .await
//! }
//! ```
//!
//! The trait is async because a cluster's operations are network calls; the embedded
//! implementation waits without blocking a runtime thread (its snapshot waits for safe time
//! on a notification, its commits on the outcome's channel). The semantics are the same on
//! both sides: procedures by name ([`Store::call`]), read-only snapshots at a [`ReadAt`]
//! ([`Store::snapshot`]), and optimistic transactions with one retry policy
//! ([`Store::transact`]: conflicts only, up to 64 attempts, with back-off), all acknowledged
//! after commit-wait. Errors are the same [`TxnError`]s; only a cluster produces
//! [`TxnError::OutcomeUnknown`] after a network failure, and [`TxnError::Unavailable`].
//!
//! The concrete types keep their own methods too: the embedded ones are synchronous (for
//! threads), so with the trait in scope a `Database` value's `db.call(..)` is still the
//! blocking one; generic code, and `Store::call(&db, ..)`, gets the async one.
//!
//! A transaction's `put` checks sizes where the limits are known: the embedded database
//! refuses an oversize value at once; a client leaves it to the shards, which abort the
//! commit with [`TxnError::TooLarge`].

use std::future::Future;

use clock::Timestamp;
use storage::KeyRange;

use crate::error::TxnError;
use crate::procedure::Rows;
use crate::transaction::{ReadAt, Retry};

/// A sealdb database, embedded or reached through a cluster client.
pub trait Store: Send + Sync {
    /// A read-only snapshot.
    type Snapshot<'a>: StoreSnapshot + Send + Sync
    where
        Self: 'a;
    /// An optimistic read-write transaction.
    type Transaction<'a>: StoreTransaction + Send
    where
        Self: 'a;

    /// Runs the registered procedure `name` with `args`; its output once committed.
    fn call(
        &self,
        name: &str,
        args: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, TxnError>> + Send;

    /// A read-only snapshot at `at`.
    fn snapshot(
        &self,
        at: ReadAt,
    ) -> impl Future<Output = Result<Self::Snapshot<'_>, TxnError>> + Send;

    /// Starts an optimistic transaction. Most callers want [`Store::transact`].
    fn begin(&self) -> Result<Self::Transaction<'_>, TxnError>;

    /// Runs `body` in a transaction and commits it, retrying on conflicts with back-off (up to
    /// 64 attempts) in the style of FoundationDB's `db.run`. `body` gets the transaction and
    /// hands it back with its result, so the future it returns owns it. It may run several
    /// times, so it should have no effects outside the transaction.
    fn transact<'s, T, F, Fut>(
        &'s self,
        mut body: F,
    ) -> impl Future<Output = Result<T, TxnError>> + Send
    where
        T: Send,
        F: FnMut(Self::Transaction<'s>) -> Fut + Send,
        Fut: Future<Output = Result<(Self::Transaction<'s>, T), TxnError>> + Send,
    {
        async move {
            let mut retry = Retry::default();
            loop {
                let result = match body(self.begin()?).await {
                    Ok((tx, value)) => tx.commit().await.map(|_| value),
                    Err(e) => Err(e),
                };
                match result.map_err(|e| retry.after(e)) {
                    Err(Ok(wait)) => tokio::time::sleep(wait).await,
                    Err(Err(e)) => return Err(e),
                    Ok(value) => return Ok(value),
                }
            }
        }
    }
}

/// The reads of a read-only snapshot ([`Store::snapshot`]).
pub trait StoreSnapshot {
    /// The timestamp read at.
    fn ts(&self) -> Timestamp;

    /// The value of `key`.
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<Vec<u8>>, TxnError>> + Send;

    /// Up to `limit` keys of `range` with values, in key order.
    fn scan(
        &self,
        range: &KeyRange,
        limit: usize,
    ) -> impl Future<Output = Result<Rows, TxnError>> + Send;
}

/// An optimistic read-write transaction ([`Store::begin`], [`Store::transact`]).
pub trait StoreTransaction {
    /// The timestamp reads use.
    fn read_ts(&self) -> Timestamp;

    /// The value of `key`: this transaction's own write if any, else the one at `read_ts`.
    fn get(&mut self, key: &[u8])
    -> impl Future<Output = Result<Option<Vec<u8>>, TxnError>> + Send;

    /// Up to `limit` keys of `range` with values, own writes included.
    fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
    ) -> impl Future<Output = Result<Rows, TxnError>> + Send;

    /// Sets `key` to `value` when the transaction commits.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxnError>;

    /// Deletes `key` when the transaction commits.
    fn delete(&mut self, key: &[u8]) -> Result<(), TxnError>;

    /// Submits the transaction and waits for its outcome: the commit timestamp, or the read
    /// timestamp for a transaction that neither read nor wrote anything.
    fn commit(self) -> impl Future<Output = Result<Timestamp, TxnError>> + Send;
}
