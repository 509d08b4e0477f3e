//! Fleet mode end to end, against real etcd processes (`tests/support/etcd.rs`): the etcd
//! client, shared state across in-process replicas, and what happens when etcd fails. Split by
//! topic into `fleet/*.rs`.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

mod support;

mod fleet {
    pub mod cli;
    pub mod client;
    pub mod measure;
    pub mod outage;
    pub mod secure;
    pub mod shared;
    pub mod view;
}
