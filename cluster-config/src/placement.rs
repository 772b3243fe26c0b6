//! Placement: digest → partition → N storage nodes.
//!
//! A digest's partition is its first 64 bits' top `log2(partitions)` bits (digests are
//! uniform). Each partition ranks the storage nodes by weighted rendezvous hashing: node `i`
//! scores `w_i / -log2(h_i)` with `h_i` the first 64 bits of SHA-256 over the partition and the
//! node id, taken as a fraction of 2^64. The highest score wins, and adding or removing a node
//! moves only the partitions it wins or held (the 1/n minimum, in expectation). Replicas go to
//! the best-ranked node of each zone not yet used, while zones remain, then to the next best.
//!
//! Placement is effectively stored (items live where it put them), so it is computed with
//! integers only: SHA-256, and a fixed-point `log2` by repeated squaring, the same on every
//! platform, compiler and process. `std`'s hashers and `f64::ln` promise no such thing.

use mirage_format::{Algorithm, Digest};

use crate::topology::{Node, Role, Topology};

/// The partition of a digest among `partitions` (a power of two).
pub fn partition_of(d: &Digest, partitions: u32) -> u32 {
    let b = d.as_bytes();
    let mut x = [0u8; 8];
    for (i, v) in x.iter_mut().enumerate() {
        *v = b.get(i).copied().unwrap_or(0);
    }
    let bits = partitions.max(1).trailing_zeros();
    if bits == 0 {
        return 0;
    }
    (u64::from_be_bytes(x) >> (64 - bits)) as u32
}

/// The first 64 bits of the smallest digest in partition `p` of `partitions`: partitions are
/// contiguous runs of digests, so a store lists one by scanning from here.
pub fn partition_start(p: u32, partitions: u32) -> u64 {
    match partitions.max(1).trailing_zeros() {
        0 => 0,
        bits => u64::from(p) << (64 - bits),
    }
}

/// `log2(x)` in Q32 fixed point, for `x > 0`.
fn log2_q32(x: u64) -> u64 {
    let lz = x.leading_zeros();
    let int = u64::from(63 - lz);
    // Mantissa in [1, 2) as Q63.
    let mut m = (x << lz) as u128;
    let mut frac = 0u64;
    for i in 0..32 {
        m = (m * m) >> 63;
        if m >= 1 << 64 {
            frac |= 1 << (31 - i);
            m >>= 1;
        }
    }
    (int << 32) | frac
}

fn node_hash(partition: u32, id: u64) -> u64 {
    let mut bytes = b"mirage-placement/1\0".to_vec();
    bytes.extend_from_slice(&partition.to_be_bytes());
    bytes.extend_from_slice(&id.to_be_bytes());
    let d =
        Digest::of(Algorithm::Sha256, &bytes).map_or([0u8; 32].to_vec(), |d| d.as_bytes().to_vec());
    let mut x = [0u8; 8];
    x.copy_from_slice(&d[..8]);
    u64::from_be_bytes(x) | 1
}

/// Weighted rendezvous score: `weight / -log2(h / 2^64)`, scaled; higher wins.
fn score(partition: u32, id: u64, weight: u64) -> u128 {
    let h = node_hash(partition, id);
    let neg_log = (64u64 << 32) - log2_q32(h); // > 0 since h < 2^64
    (u128::from(weight) << 64) / u128::from(neg_log.max(1))
}

/// Where every partition's replicas are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    partitions: u32,
    table: Vec<Vec<u64>>,
}

impl Placement {
    /// The placement of a topology.
    pub fn of(t: &Topology) -> Placement {
        Placement::compute(&t.nodes, t.partitions, t.replication)
    }

    /// The placement of `replication` copies over the storage nodes of `nodes`.
    pub fn compute(nodes: &[Node], partitions: u32, replication: usize) -> Placement {
        let storage: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.roles.contains(&Role::Storage))
            .collect();
        let n = replication.min(storage.len());
        let table = (0..partitions)
            .map(|p| {
                let mut ranked: Vec<(u128, u64, &str)> = storage
                    .iter()
                    .map(|node| {
                        (
                            score(p, node.id, node.capacity_gb),
                            node.id,
                            node.zone.as_str(),
                        )
                    })
                    .collect();
                ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                let mut picked: Vec<u64> = Vec::with_capacity(n);
                let mut zones: Vec<&str> = Vec::new();
                for (_, id, zone) in &ranked {
                    if picked.len() < n && !zones.contains(zone) {
                        picked.push(*id);
                        zones.push(zone);
                    }
                }
                for (_, id, _) in &ranked {
                    if picked.len() < n && !picked.contains(id) {
                        picked.push(*id);
                    }
                }
                picked
            })
            .collect();
        Placement { partitions, table }
    }

    /// Nodes holding `d`, best first.
    pub fn nodes_for(&self, d: &Digest) -> &[u64] {
        self.partition(partition_of(d, self.partitions))
    }

    /// Nodes of partition `p`, best first.
    pub fn partition(&self, p: u32) -> &[u64] {
        self.table.get(p as usize).map_or(&[], Vec::as_slice)
    }

    /// Partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// (partition, node) replica assignments that differ between two placements.
    pub fn moved(&self, other: &Placement) -> usize {
        self.table
            .iter()
            .zip(&other.table)
            .map(|(a, b)| a.iter().filter(|x| !b.contains(x)).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_log2() {
        assert_eq!(log2_q32(1), 0);
        assert_eq!(log2_q32(2), 1 << 32);
        assert_eq!(log2_q32(1 << 40), 40 << 32);
        // log2(3) = 1.584962500721156...
        let l3 = log2_q32(3) as f64 / (1u64 << 32) as f64;
        assert!((l3 - 1.584_962_500_721_156).abs() < 1e-8, "{l3}");
        let lmax = log2_q32(u64::MAX) as f64 / (1u64 << 32) as f64;
        assert!((lmax - 64.0).abs() < 1e-8, "{lmax}");
    }

    #[test]
    fn a_partition_starts_where_partition_of_says_it_does() {
        for parts in [1u32, 2, 256, 1024] {
            for p in [0, parts / 2, parts - 1] {
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&partition_start(p, parts).to_be_bytes());
                let d = Digest::from_bytes(Algorithm::Sha256, &b).unwrap();
                assert_eq!(partition_of(&d, parts), p, "{p} of {parts}");
                if p > 0 {
                    let before = partition_start(p, parts) - 1;
                    b[..8].copy_from_slice(&before.to_be_bytes());
                    b[8..].fill(0xff);
                    let d = Digest::from_bytes(Algorithm::Sha256, &b).unwrap();
                    assert_eq!(partition_of(&d, parts), p - 1);
                }
            }
        }
    }
}
