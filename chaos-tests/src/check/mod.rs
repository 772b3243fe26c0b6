//! Checkers, one per invariant, over a recorded history and the cluster's final state.

pub mod catalog;
pub mod checkout;
pub mod items;
pub mod linear;
pub mod liveness;
pub mod model;
