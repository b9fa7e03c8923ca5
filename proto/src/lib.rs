//! sealdb's wire protocol: the `.proto` files under `proto/sealdb/v1/` and the Rust code
//! `tonic` and `prost` generate from them. Nothing else lives here (DESIGN.md section 2);
//! conversions to domain types live next to the domain types.
//!
//! The messages need only `prost`; the `grpc` feature adds the services, which need `tonic`.
//!
//! Services: `v1::sequencer_server::Sequencer` (submit entries, subscribe to sealed windows),
//! `v1::shard_server::Shard` (reads at a timestamp, per-window verdict exchange and remote
//! reads, outcomes, status) and `v1::admin_server::Admin` (cluster status). Every message
//! carries the sender's HLC timestamp in its `hlc` field.

/// Version 1 of the protocol, package `sealdb.v1` (the services with the `grpc` feature).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sealdb.v1.rs"));
}
