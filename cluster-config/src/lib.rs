//! Cluster topology, validation and placement (filled in by the node/Raft issue).
