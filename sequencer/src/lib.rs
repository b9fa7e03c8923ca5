//! The sequencer: orders read-write transactions into sealed, durable windows (DESIGN.md
//! sections 2 and 6). Empty until the core engine issue; it exists so the workspace has its
//! final shape: it may use `clock`, `storage` and `proto`, never `txn`.
