//! Transactions: request types, the `Procedure` trait and registry, the shard window executor,
//! validation, errors, the embedded `Database`, and the gRPC `Client` and services (DESIGN.md
//! sections 3, 4 and 9).
//!
//! The crate is empty until the "Core engine" issue lands; it exists so the workspace has its
//! final shape. It may use `clock`, `storage`, `proto` and `sequencer`.
