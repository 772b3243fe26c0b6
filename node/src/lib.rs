//! Storage node.
