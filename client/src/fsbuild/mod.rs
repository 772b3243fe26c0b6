//! Recreating filesystems at checkout.

pub mod ext4;
