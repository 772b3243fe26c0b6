//! SHA-256 of many messages at once.
//!
//! A SHA-NI round instruction waits for the one before it, so hashing one message leaves the
//! core's SHA unit idle most of the time: one stream runs at 1.8 GB/s on the machines Mirage is
//! benchmarked on, bound by that chain's latency. Four independent messages interleaved round
//! by round keep the unit busy: 3.5 GB/s on the same core (docs/PERFORMANCE.md, twenty-fourth
//! session). A checkin hashes many chunks and small files one after another, so it hands them
//! here in groups. The digests are those of [`sha2::Sha256`] bit for bit (property-tested);
//! without SHA-NI, or on another architecture, each message is hashed by `sha2` alone.

use sha2::digest::generic_array::GenericArray;
use sha2::Digest as _;

/// Messages hashed side by side.
const LANES: usize = 4;

/// SHA-256 of `prefix ++ body` for every body, in order.
pub fn sha256_each(prefix: &[u8], bodies: &[&[u8]]) -> Vec<[u8; 32]> {
    if bodies.len() > 1 && prefix.len() < 64 && shani::available() {
        return run(prefix, bodies);
    }
    bodies.iter().map(|b| one(prefix, b)).collect()
}

/// SHA-256 of `prefix ++ body` by `sha2` alone.
fn one(prefix: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(prefix);
    h.update(body);
    h.finalize().into()
}

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// One message on its way through a lane: a first block holding the prefix and the body's
/// start, the body's whole blocks read where they are, and a last block or two holding the
/// body's end and the padding.
struct Lane<'a> {
    out: usize,
    state: [u32; 8],
    head: [u8; 64],
    head_blocks: usize,
    middle: &'a [u8],
    tail: [u8; 128],
    tail_blocks: usize,
    /// 0: head, 1: middle, 2: tail.
    part: u8,
    /// Blocks of the current part done.
    done: usize,
}

impl<'a> Lane<'a> {
    fn new(out: usize, prefix: &[u8], body: &'a [u8]) -> Self {
        let p = prefix.len();
        let mut head = [0u8; 64];
        let (head_blocks, middle, rest): (usize, &[u8], &[u8]) = if p + body.len() >= 64 {
            head[..p].copy_from_slice(prefix);
            head[p..].copy_from_slice(&body[..64 - p]);
            let after = &body[64 - p..];
            let whole = after.len() / 64 * 64;
            (1, &after[..whole], &after[whole..])
        } else {
            (0, &[], body)
        };
        // What the head block did not take: the prefix too when there was no head block.
        let mut tail = [0u8; 128];
        let mut n = 0;
        if head_blocks == 0 {
            tail[..p].copy_from_slice(prefix);
            n = p;
        }
        tail[n..n + rest.len()].copy_from_slice(rest);
        n += rest.len();
        tail[n] = 0x80;
        let tail_blocks = if n < 56 { 1 } else { 2 };
        let bits = ((p as u64).wrapping_add(body.len() as u64)).wrapping_mul(8);
        tail[tail_blocks * 64 - 8..tail_blocks * 64].copy_from_slice(&bits.to_be_bytes());
        let mut lane = Lane {
            out,
            state: H0,
            head,
            head_blocks,
            middle,
            tail,
            tail_blocks,
            part: 0,
            done: 0,
        };
        lane.skip_empty();
        lane
    }

    /// The blocks of the current part not yet hashed.
    fn blocks(&self) -> &[u8] {
        let all: &[u8] = match self.part {
            0 => &self.head[..64 * self.head_blocks],
            1 => self.middle,
            2 => &self.tail[..64 * self.tail_blocks],
            _ => &[],
        };
        &all[(64 * self.done).min(all.len())..]
    }

    fn skip_empty(&mut self) {
        while self.part < 3 && self.blocks().is_empty() {
            self.part += 1;
            self.done = 0;
        }
    }

    /// Marks `n` blocks of the current part hashed.
    fn advance(&mut self, n: usize) {
        self.done += n;
        self.skip_empty();
    }

    fn digest(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (o, w) in d.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        d
    }
}

/// Hashes `bodies` with [`LANES`] messages in flight, taking the next as soon as one finishes.
fn run(prefix: &[u8], bodies: &[&[u8]]) -> Vec<[u8; 32]> {
    let mut out = vec![[0u8; 32]; bodies.len()];
    // Longest first, so that the lanes run out of work close together and the last
    // message is not left to finish alone (at a single stream's speed).
    let mut order: Vec<usize> = (0..bodies.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(bodies[i].len()));
    let mut queue = order.into_iter();
    let mut lanes: Vec<Lane<'_>> = Vec::with_capacity(LANES);
    loop {
        while lanes.len() < LANES {
            let Some(i) = queue.next() else { break };
            lanes.push(Lane::new(i, prefix, bodies[i]));
        }
        if lanes.is_empty() {
            break;
        }
        // Every lane has at least one block left in its current part.
        let n = lanes
            .iter()
            .map(|l| l.blocks().len() / 64)
            .min()
            .unwrap_or(0)
            .max(1);
        match lanes.len() {
            4 => step::<4>(&mut lanes, n),
            3 => step::<3>(&mut lanes, n),
            2 => step::<2>(&mut lanes, n),
            _ => single(&mut lanes[0]),
        }
        lanes.retain(|l| {
            let finished = l.part == 3;
            if finished {
                out[l.out] = l.digest();
            }
            !finished
        });
    }
    out
}

/// `n` blocks of each of `N` lanes, side by side.
fn step<const N: usize>(lanes: &mut [Lane<'_>], n: usize) {
    let mut states = [[0u32; 8]; N];
    for (s, l) in states.iter_mut().zip(lanes.iter()) {
        *s = l.state;
    }
    {
        let blocks: [&[u8]; N] = std::array::from_fn(|k| &lanes[k].blocks()[..64 * n]);
        shani::compress(&mut states, blocks);
    }
    for (s, l) in states.into_iter().zip(lanes.iter_mut()) {
        l.state = s;
        l.advance(n);
    }
}

/// The last message in flight, to its end, by `sha2`'s own compression (one stream of
/// dependent rounds either way, and `sha2` schedules it best).
fn single(lane: &mut Lane<'_>) {
    let mut buf = [GenericArray::<u8, sha2::digest::consts::U64>::default(); 64];
    while lane.part < 3 {
        let take = (lane.blocks().len() / 64).min(buf.len());
        for (b, src) in buf.iter_mut().zip(lane.blocks().chunks_exact(64)) {
            b.copy_from_slice(src);
        }
        sha2::compress256(&mut lane.state, &buf[..take]);
        lane.advance(take);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod shani {
    //! SHA-NI rounds for several messages at once. The only unsafe code is the intrinsics
    //! themselves, called once the CPU is known to have them; every load is from a
    //! bounds-checked slice.
    use std::arch::x86_64::*;

    use super::K;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("sha")
            && is_x86_feature_detected!("sse4.1")
            && is_x86_feature_detected!("ssse3")
    }

    /// Hashes `blocks[k]` (whole 64-byte blocks, the same number for every lane) into
    /// `states[k]`.
    pub(super) fn compress<const N: usize>(states: &mut [[u32; 8]; N], blocks: [&[u8]; N]) {
        if available() {
            // SAFETY: the CPU has the features `rounds` is compiled for (checked above).
            unsafe { rounds(states, blocks) }
        } else {
            super::portable(states, blocks)
        }
    }

    #[target_feature(enable = "sha,sse4.1,ssse3")]
    unsafe fn load(b: &[u8]) -> __m128i {
        let b = &b[..16];
        // SAFETY: `b` holds 16 bytes; unaligned loads are allowed.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    #[target_feature(enable = "sha,sse4.1,ssse3")]
    unsafe fn rounds<const N: usize>(states: &mut [[u32; 8]; N], blocks: [&[u8]; N]) {
        let nblocks = blocks.iter().map(|b| b.len() / 64).min().unwrap_or(0);
        // Big-endian words.
        let order = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        let mut abef = [_mm_setzero_si128(); N];
        let mut cdgh = [_mm_setzero_si128(); N];
        for l in 0..N {
            // SAFETY (both loads): each half of a state is 16 bytes.
            let dcba = unsafe { _mm_loadu_si128(states[l].as_ptr().cast()) };
            let hgfe = unsafe { _mm_loadu_si128(states[l][4..].as_ptr().cast()) };
            let cdab = _mm_shuffle_epi32(dcba, 0xB1);
            let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
            abef[l] = _mm_alignr_epi8(cdab, efgh, 8);
            cdgh[l] = _mm_blend_epi16(efgh, cdab, 0xF0);
        }
        for b in 0..nblocks {
            let (abef0, cdgh0) = (abef, cdgh);
            let mut w = [[_mm_setzero_si128(); 4]; N];
            for i in 0..16 {
                // SAFETY: K holds 64 words.
                let k = unsafe { _mm_loadu_si128(K[4 * i..].as_ptr().cast()) };
                for l in 0..N {
                    let wi = if i < 4 {
                        let raw = unsafe { load(&blocks[l][64 * b + 16 * i..]) };
                        _mm_shuffle_epi8(raw, order)
                    } else {
                        let m = _mm_sha256msg1_epu32(w[l][(i - 4) & 3], w[l][(i - 3) & 3]);
                        let m = _mm_add_epi32(
                            m,
                            _mm_alignr_epi8(w[l][(i - 1) & 3], w[l][(i - 2) & 3], 4),
                        );
                        _mm_sha256msg2_epu32(m, w[l][(i - 1) & 3])
                    };
                    w[l][i & 3] = wi;
                    let msg = _mm_add_epi32(wi, k);
                    cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], msg);
                    abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l], _mm_shuffle_epi32(msg, 0x0E));
                }
            }
            for l in 0..N {
                abef[l] = _mm_add_epi32(abef[l], abef0[l]);
                cdgh[l] = _mm_add_epi32(cdgh[l], cdgh0[l]);
            }
        }
        for l in 0..N {
            let feba = _mm_shuffle_epi32(abef[l], 0x1B);
            let dchg = _mm_shuffle_epi32(cdgh[l], 0xB1);
            let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
            let hgfe = _mm_alignr_epi8(dchg, feba, 8);
            // SAFETY (both stores): each half of a state is 16 bytes.
            unsafe { _mm_storeu_si128(states[l].as_mut_ptr().cast(), dcba) };
            unsafe { _mm_storeu_si128(states[l][4..].as_mut_ptr().cast(), hgfe) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod shani {
    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn compress<const N: usize>(states: &mut [[u32; 8]; N], blocks: [&[u8]; N]) {
        super::portable(states, blocks)
    }
}

/// [`shani::compress`] by `sha2`, a lane at a time.
fn portable<const N: usize>(states: &mut [[u32; 8]; N], blocks: [&[u8]; N]) {
    for (s, b) in states.iter_mut().zip(blocks) {
        let blocks: Vec<_> = b
            .chunks_exact(64)
            .map(|c| *GenericArray::from_slice(c))
            .collect();
        sha2::compress256(s, &blocks);
    }
}

/// SHA-256 round constants.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::pseudo_random as bytes;

    fn check(prefix: &[u8], lens: &[usize]) {
        let data: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, n)| bytes(*n, i as u64 + 7))
            .collect();
        let bodies: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let want: Vec<[u8; 32]> = bodies.iter().map(|b| one(prefix, b)).collect();
        assert_eq!(
            sha256_each(prefix, &bodies),
            want,
            "prefix {prefix:?}, lengths {lens:?}"
        );
    }

    #[test]
    fn every_length_around_the_padding_and_block_edges() {
        // Lengths where the padding takes one block or two, with and without a prefix, and
        // lanes finishing at every point of each other's messages.
        let edges: Vec<usize> = (0..=3)
            .flat_map(|b| [54, 55, 56, 57, 62, 63, 64, 65].map(|e| b * 64 + e))
            .chain([0, 1, 2, 1000, 4096, 70_000])
            .collect();
        for prefix in [&b""[..], &b"\x01\x01"[..], &[9u8; 63][..]] {
            check(prefix, &edges);
            for w in edges.windows(5) {
                check(prefix, w);
            }
        }
    }

    #[test]
    fn one_message_and_none() {
        check(b"\x01\x01", &[100_000]);
        assert!(sha256_each(b"", &[]).is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any number of messages of any lengths gives `sha2`'s digests, in order.
        #[test]
        fn the_digests_are_sha2s(
            lens in proptest::collection::vec(0usize..5000, 0..11),
            prefix_len in 0usize..80,
        ) {
            let prefix = bytes(prefix_len, 99);
            check(&prefix, &lens);
        }
    }
}
