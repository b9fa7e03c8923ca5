//! [`RemoteSequencer`]: a client of a sequencer node: submit an entry and get its receipt once
//! its window is durable; subscribe to one shard's slices of the sealed windows from an epoch
//! on ([`SliceDelivery`]); ask for a window when idle.

use std::sync::Arc;

use clock::{Clock, Epoch, Timestamp};
use proto::v1;
use proto::v1::sequencer_client::SequencerClient;
use sequencer::{ClientId, Entry, Receipt, ShardId, TxnId};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::sized;
use crate::tls::Tls;
use crate::wire::{RefusalKind, RemoteError, SetupError, endpoint, observe_response, stamp};

/// What a subscriber receives, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceDelivery {
    /// A durable window: its entries that touch the subscriber's shard, in log order.
    Window {
        /// The window's epoch; consecutive.
        epoch: Epoch,
        /// The window's timestamp.
        ts: Timestamp,
        /// Its entries for this shard, with their ids.
        entries: Vec<(TxnId, Entry)>,
    },
    /// No window will be stamped at or below this timestamp.
    Tick(Timestamp),
}

/// How long a submission waits for its receipt.
const SUBMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client of a [`SequencerNode`], stamping its requests with `clock`.
#[derive(Clone)]
pub struct RemoteSequencer {
    client: SequencerClient<Channel>,
    clock: Arc<Clock>,
}

impl RemoteSequencer {
    /// Connects to the sequencer at `addr` (`host:port`).
    pub async fn connect(addr: &str, clock: Arc<Clock>) -> Result<RemoteSequencer, RemoteError> {
        RemoteSequencer::connect_tls(addr, clock, None).await
    }

    /// [`RemoteSequencer::connect`], over TLS with `tls`.
    pub async fn connect_tls(
        addr: &str,
        clock: Arc<Clock>,
        tls: Option<&Tls>,
    ) -> Result<RemoteSequencer, RemoteError> {
        let endpoint = endpoint(addr, tls).map_err(|why| RemoteError::Refused {
            kind: RefusalKind::Malformed,
            why: why.to_string(),
        })?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| RemoteError::Unavailable(format!("connecting to {addr}: {e}")))?;
        Ok(RemoteSequencer { client: sized!(SequencerClient::new(channel)), clock })
    }

    /// A client of the sequencer at `addr` that connects on first use (and reconnects after
    /// failures), for nodes that start before the sequencer does.
    pub fn lazy(
        addr: &str,
        clock: Arc<Clock>,
        tls: Option<&Tls>,
    ) -> Result<RemoteSequencer, SetupError> {
        let endpoint = endpoint(addr, tls)?;
        Ok(RemoteSequencer { client: sized!(SequencerClient::new(endpoint.connect_lazy())), clock })
    }

    /// Submits `entry` and returns its receipt once its window is durable. After
    /// [`RemoteError::Unavailable`] or [`RemoteError::BadResponse`] the entry may or may not
    /// be logged: submitting it again (same client id) returns the original receipt, marked
    /// duplicate, if it was. [`RemoteError::ClockSkew`] and [`RemoteError::Refused`] mean the
    /// sequencer refused this request: nothing of it was logged. (A receipt whose clock is too
    /// far ahead is a bad response, not a refusal: the entry is logged.)
    pub async fn submit(&self, entry: &Entry) -> Result<Receipt, RemoteError> {
        let request = v1::SubmitRequest {
            hlc: stamp(&self.clock),
            participants: entry.participants.iter().map(|p| p.0).collect(),
            payload: entry.payload.to_vec(),
            client_id: entry.client_id.0.to_le_bytes().to_vec(),
        };
        // The sequencer answers once the window is durable: a wedged one must not keep the
        // caller forever (the entry's fate is then unknown, as after any failure).
        let mut request = tonic::Request::new(request);
        request.set_timeout(SUBMIT_TIMEOUT);
        let r = self.client.clone().submit(request).await?.into_inner();
        observe_response(&self.clock, r.hlc)
            .map_err(|e| RemoteError::BadResponse(format!("a receipt refused: {e}")))?;
        let txn =
            r.txn.ok_or_else(|| RemoteError::BadResponse("a receipt without an id".into()))?;
        Ok(Receipt {
            txn: TxnId { epoch: Epoch(txn.epoch), index: txn.index },
            ts: Timestamp::from_u64(r.window_ts),
            duplicate: r.duplicate,
        })
    }

    /// Asks for a window after `after` (the last one the caller has) to be logged even if
    /// empty, unless there is one already.
    pub async fn request_window(&self, after: Epoch) -> Result<(), RemoteError> {
        let request = v1::RequestWindowRequest { hlc: stamp(&self.clock), after_epoch: after.0 };
        let r = self.client.clone().request_window(request).await?.into_inner();
        observe_response(&self.clock, r.hlc)
    }

    /// `shard`'s slices of every window from `from` on, then the live ones and ticks.
    pub async fn subscribe(
        &self,
        shard: ShardId,
        from: Epoch,
    ) -> Result<mpsc::Receiver<Result<SliceDelivery, RemoteError>>, RemoteError> {
        let request =
            v1::SubscribeRequest { hlc: stamp(&self.clock), shard: shard.0, from_epoch: from.0 };
        let mut stream = self.client.clone().subscribe(request).await?.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let clock = self.clock.clone();
        tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(slice)) => slice_delivery(&clock, slice),
                    Ok(None) => {
                        Err(RemoteError::Unavailable("the sequencer ended the stream".into()))
                    }
                    Err(status) => Err(status.into()),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn slice_delivery(clock: &Clock, s: v1::WindowSlice) -> Result<SliceDelivery, RemoteError> {
    observe_response(clock, s.hlc)?;
    let ts = Timestamp::from_u64(s.window_ts);
    if s.tick {
        return Ok(SliceDelivery::Tick(ts));
    }
    let epoch = Epoch(s.epoch);
    let entries = s
        .entries
        .into_iter()
        .map(|e| {
            let txn = TxnId { epoch, index: e.index };
            let id: [u8; 16] = e.client_id.as_slice().try_into().map_err(|_| {
                RemoteError::BadResponse(format!(
                    "entry {txn}: a client id of {} bytes",
                    e.client_id.len()
                ))
            })?;
            let participants = e.participants.into_iter().map(ShardId).collect();
            Ok((txn, Entry::new(ClientId(u128::from_le_bytes(id)), participants, e.payload.into())))
        })
        .collect::<Result<_, RemoteError>>()?;
    Ok(SliceDelivery::Window { epoch, ts, entries })
}
