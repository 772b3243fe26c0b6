//! Names of ext2/3/4 feature bits, as `mke2fs -O` and `dumpe2fs` spell them: used to name
//! what a refused filesystem has, and to recreate a filesystem's feature list.

/// Compatible features.
pub const COMPAT: &[(u32, &str)] = &[
    (0x1, "dir_prealloc"),
    (0x2, "imagic_inodes"),
    (0x4, "has_journal"),
    (0x8, "ext_attr"),
    (0x10, "resize_inode"),
    (0x20, "dir_index"),
    (0x200, "sparse_super2"),
    (0x400, "fast_commit"),
    (0x800, "stable_inodes"),
    (0x1000, "orphan_file"),
];

/// Incompatible features (`needs_recovery`, 0x4, is a state and not listed).
pub const INCOMPAT: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];

/// Read-only compatible features (`orphan_present`, 0x10000, is a state but listed).
pub const RO_COMPAT: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

/// The names of `bits` in `table`, comma-separated; bits without a name as one hex number.
pub fn names(bits: u32, table: &[(u32, &str)]) -> String {
    let mut out = Vec::new();
    let mut rest = bits;
    for (bit, name) in table {
        if bits & bit != 0 {
            out.push((*name).to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        out.push(format!("unknown {rest:#x}"));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_bits_and_shows_the_rest_in_hex() {
        assert_eq!(names(0x10000 | 0x1, INCOMPAT), "compression, encrypt");
        assert_eq!(
            names(0x200 | 0x4_0000, RO_COMPAT),
            "bigalloc, unknown 0x40000"
        );
        assert_eq!(names(0, COMPAT), "");
    }
}
