//! Fleet mode: N replicas share keys, signing keys, role assignments and the bootstrap admin
//! credential through an etcd namespace (`[cluster] backend = "etcd"`).
//!
//! - `proto`: the etcd v3 bindings `build.rs` generates with protox (no system `protoc`).
//! - [`etcd`]: a thin client: prefix reads with their revision, watches from a revision that
//!   report compaction, create-if-absent and compare-mod-revision transactions, leases.
//! - [`seal`]: AES-256-GCM sealing of every value stored, with the etcd key as associated data.

pub mod etcd;
mod proto;
pub mod seal;
