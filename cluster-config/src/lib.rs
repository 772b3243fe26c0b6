//! Cluster topology: the TOML file that describes a cluster ([`topology`]), its validation
//! with errors that name the line and field, and placement of items on nodes
//! ([`placement`]: digest → partition → N nodes, weighted by capacity, replicas in distinct
//! zones while zones remain, from integer arithmetic only so that every platform, compiler and
//! process computes the same placement), and the versioned data layout the catalog keeps
//! ([`layout`]: nodes added, drained and removed, and which partitions a change moves).

pub mod layout;
pub mod placement;
pub mod topology;

pub use layout::{Layout, LayoutChange, LayoutError, LayoutNode, NodeState};
pub use placement::{partition_of, partition_start, Placement};
pub use topology::{ConfigError, Node, Role, Topology};
