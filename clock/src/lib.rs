//! Time for sealdb: hybrid logical clock timestamps, the maximum clock offset, and commit-wait.
//!
//! Every node runs one [`Clock`]. It hands out [`Timestamp`]s that
//!
//! - never go backwards, even when the wall clock does, and even across a restart when the
//!   clock is opened with a persisted high-water mark ([`Clock::open`]);
//! - stay close to physical time, so a timestamp means "about then" to a human and to the
//!   retention window;
//! - absorb timestamps seen from other nodes ([`Clock::observe`]), so causality carries over the
//!   network: anything a node stamps after receiving a message is above the message's stamp.
//!
//! The guarantee sealdb's strict serializability rests on (DESIGN.md section 5) is the
//! *maximum offset*: no two correct clocks in a cluster differ by more than `max_offset`. The
//! clock enforces the half of it it can see: a remote timestamp more than `max_offset` ahead of
//! the local physical clock is refused with [`ClockSkew`] instead of being absorbed. Given the
//! bound, [`Clock::commit_wait`] makes a write safe to acknowledge:
//!
//! ```text
//!   window stamped ts_e        local physical clock passes ts_e + max_offset
//!        |                                 |
//!   -----+---------------------------------+-----> local time
//!        |<-------- commit-wait ---------->|  ack sent: every clock in the cluster
//!                                              (within max_offset) is now past ts_e,
//!                                              so any later `now()` anywhere is > ts_e.
//! ```
//!
//! Physical time comes from a [`PhysicalClock`]: the [`SystemClock`] in production, a
//! [`ManualClock`] that tests move by hand, and an [`OffsetClock`] that skews another clock for
//! skew tests.
//!
//! Timestamps use the format of the `uhlc` crate: a 64-bit NTP time ([`uhlc::NTP64`], 32 bits
//! of seconds since the Unix epoch and 32 bits of fraction) whose lowest four bits are a logical
//! counter. `uhlc`'s own `HLC` type takes its physical clock as a plain function pointer and
//! cannot be seeded from a persisted high-water mark, so [`Clock`] keeps the HLC state itself
//! (one atomic word) with `uhlc`'s update rule; see the README's "Departures from DESIGN.md".
//!
//! The log's logical time lives here too: an [`Epoch`] numbers sealed windows, and both
//! storage (the applied-window watermark) and the sequencer use it without depending on each
//! other.
//!
//! Not here: distributing time (that rides on every RPC, in the services) and deciding what to
//! do when a node is out of bounds (the caller stops serving).

mod clock;
mod epoch;
mod physical;
mod timestamp;

pub use crate::clock::{
    Clock, ClockError, ClockSkew, HIGH_WATER_LEASE, HighWaterStats, ObserveError, RENEW_MARGIN,
};
pub use crate::epoch::Epoch;
pub use crate::physical::{ManualClock, OffsetClock, PhysicalClock, SystemClock};
pub use crate::timestamp::Timestamp;
