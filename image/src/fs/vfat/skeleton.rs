//! The FAT volume's skeleton: the reserved sectors, the FATs and the fixed root directory, and
//! every cluster the FAT marks in use that is not regular-file data (directories, and clusters
//! marked bad). See the ext4 skeleton for what a skeleton is for.

use super::Vfat;
use crate::fs::ext4::skeleton::{merge_ranges, subtract_ranges};
use crate::fs::FsError;

impl Vfat {
    /// Absolute byte ranges of the skeleton, given the absolute byte ranges of file content.
    pub fn skeleton_ranges(&self, file_data: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, FsError> {
        let g = &self.geo;
        let mut used = vec![(self.offset, g.data_start)];
        let mut run: Option<u32> = None;
        let last = g.clusters + 2;
        for c in 2..last {
            let in_use = self.fat_entry(c)? != 0;
            match (in_use, run) {
                (true, None) => run = Some(c),
                (false, Some(s)) => {
                    used.push((self.cluster_offset(s), self.cluster_offset(c)));
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(s) = run {
            used.push((
                self.cluster_offset(s),
                self.cluster_offset(s) + u64::from(last - s) * g.cluster_size,
            ));
        }
        let cs = g.cluster_size;
        let cut: Vec<(u64, u64)> = file_data
            .iter()
            .map(|&(s, e)| (s, s + (e - s).div_ceil(cs) * cs))
            .collect();
        Ok(subtract_ranges(&merge_ranges(used), &merge_ranges(cut)))
    }
}
