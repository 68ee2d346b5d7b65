//! Failover drills for Riptide.
//!
//! A drill starts real `riptide node` processes, each in its own network namespace with its own
//! address ([`net`], [`cluster`]), labelled with regions and zones; runs producers that give
//! every record a unique id and readers that follow every shard ([`workload`]); applies faults
//! (kill -9, SIGSTOP, isolation, one-way cuts, losing a region, rolling restarts, leader
//! transfer storms: [`drills`]); and hands the recorded [`history`] to the [`checker`], which
//! proves that every acknowledged record is readable where its sequence number says, once and
//! in order, and that nothing was read that was never written.
//!
//! The `riptide-chaos` binary runs the drills for operators; `tests/smoke.rs` runs a short one
//! in the test suite. Drills need root and iproute2 (`ip netns`, veth, bridge).

pub mod checker;
pub mod cluster;
pub mod drills;
pub mod history;
pub mod net;
pub mod proxy;
pub mod workload;
