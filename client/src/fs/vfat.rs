//! vfat reader (in progress).
