//! Chaos tests for Mirage clusters: a process-level harness (real `mirage-node` processes in
//! network namespaces, with nemeses), a recorded concurrent workload, one checker per
//! invariant, and a deterministic simulation of the catalog and placement logic.

pub mod check;
pub mod harness;
pub mod history;
pub mod nemesis;
pub mod run;
pub mod sim;
pub mod workload;
