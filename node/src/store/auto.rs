//! [`Codec::Auto`](super::Codec::Auto): compress at write time only while the disk is the
//! bottleneck. Sans-IO: the store feeds it the clock and running totals: the time its
//! committer and syncer spent writing and syncing volumes, the bytes they wrote, and the bytes
//! its writers submitted before compression.
//!
//! Every [`WINDOW_NS`] the window just ended is judged by the **raw load**: the rate at which
//! writers submitted bytes (before compression) divided by the rate at which the disk took
//! them (bytes written per second of volume I/O). That is the share of wall time the disk would
//! be busy if every byte were written raw, whatever is being done now, and it does not depend
//! on how full the write pipeline happens to be. Smoothed over windows (each new one weighs
//! a quarter, so that one stalled window does not switch; the first, [`FIRST_WINDOW_NS`]
//! long, counts alone), at or above [`LOAD_ON`] the disk holds the writers back by more than
//! compressing would cost them, and batches are compressed (LZ4); below [`LOAD_OFF`] they are
//! stored as they are; in between the choice stays. The threshold is above 1 because LZ4 is
//! not free: at a load just over 1 the disk waits a little, while compressing every byte adds
//! CPU time of the order of the hashing and chunking the writers already do (on two cores a
//! load of 1.0–1.3 was faster raw than with LZ4, PERFORMANCE.md). A window with no batch or no completed write, or
//! that an idle spell stretched past two window lengths, says nothing and is not judged. On a
//! disk that takes raw bytes as fast as the writers make them nothing is compressed; on a slow
//! one, everything is. `mirage store compact` recompresses with zstd later either way.
//!
//! Measured on the project VM (base.img, 640 MB of new content; docs/PERFORMANCE.md): direct
//! writes at about 1.7 GB/s against writers submitting about 1 GB/s raw; with the disk
//! throttled to 250 MB/s the raw load is above 2.

/// Length of a measurement window.
pub(crate) const WINDOW_NS: u64 = 100_000_000;
/// Length of the first window, judged on its own.
pub(crate) const FIRST_WINDOW_NS: u64 = 50_000_000;
/// Raw load at or above which batches are compressed.
pub(crate) const LOAD_ON: f64 = 1.5;
/// Raw load below which they are stored raw again.
pub(crate) const LOAD_OFF: f64 = 1.25;
/// A window's load counts as at most this much: a disk stall (a window at ten times the
/// usual load) must not switch compression on alone; two heavy windows in a row do.
pub(crate) const LOAD_CAP: f64 = 3.0;

/// Running totals the store keeps (all monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Nanoseconds spent writing and syncing volumes.
    pub(crate) busy: u64,
    /// Bytes written to volumes.
    pub(crate) written: u64,
    /// Record bytes writers submitted, counted before compression.
    pub(crate) raw: u64,
}

/// The decision and the window it is being measured over.
#[derive(Debug)]
pub(crate) struct AutoCodec {
    window_start: u64,
    at_start: Totals,
    /// Batches prepared in the current window.
    batches: u32,
    /// The raw load, smoothed over windows (each window weighs a quarter).
    load: f64,
    /// Whether a window has been judged yet.
    judged: bool,
    compress: bool,
}

impl Default for AutoCodec {
    /// Compressing until the first (short) window shows the disk keeping up: on a fast disk
    /// that costs 50 ms of compression; starting raw on a slow one would cost a window's worth
    /// of uncompressed bytes queued behind the disk.
    fn default() -> Self {
        AutoCodec {
            window_start: 0,
            at_start: Totals::default(),
            batches: 0,
            load: LOAD_ON,
            judged: false,
            compress: true,
        }
    }
}

impl AutoCodec {
    /// Whether to compress the batch being prepared at `now` (nanoseconds on a monotonic
    /// clock), given the store's running totals.
    pub(crate) fn compress(&mut self, now: u64, totals: Totals) -> bool {
        let elapsed = now.saturating_sub(self.window_start);
        let window = if self.judged {
            WINDOW_NS
        } else {
            FIRST_WINDOW_NS
        };
        if elapsed >= window {
            let d = |f: fn(&Totals) -> u64| f(&totals).saturating_sub(f(&self.at_start));
            let (busy, written, raw) = (d(|t| t.busy), d(|t| t.written), d(|t| t.raw));
            if self.batches > 0 && elapsed < 2 * WINDOW_NS && busy > 0 && written > 0 {
                // (raw / elapsed) / (written / busy)
                self.judge(raw as f64 * busy as f64 / (elapsed as f64 * written as f64));
            }
            self.window_start = now;
            self.at_start = totals;
            self.batches = 0;
        }
        self.batches = self.batches.saturating_add(1);
        self.compress
    }

    fn judge(&mut self, window_load: f64) {
        let was = self.compress;
        let window_load = window_load.min(LOAD_CAP);
        self.load = if self.judged {
            0.75 * self.load + 0.25 * window_load
        } else {
            window_load
        };
        self.judged = true;
        tracing::trace!(window_load, load = self.load, "auto codec window");
        if self.load >= LOAD_ON {
            self.compress = true;
        } else if self.load < LOAD_OFF {
            self.compress = false;
        }
        if was != self.compress {
            tracing::debug!(
                window_load,
                load = self.load,
                compress = self.compress,
                "auto codec switched"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Totals of `busy` ms of I/O, and bytes written and submitted as many as ns in `written`
    /// and `raw` ms.
    fn ms(busy: u64, written: u64, raw: u64) -> Totals {
        Totals {
            busy: busy * MS,
            written: written * MS,
            raw: raw * MS,
        }
    }

    /// Totals after `t_ms` at a disk of 1 byte per ns busy (1 GB/s) and writers submitting
    /// `load` times what that disk takes in the same wall time, the disk busy `busy` of it.
    fn window(prev: Totals, load: f64, busy: f64) -> Totals {
        let busy_ns = (100.0 * busy) as u64 * MS;
        Totals {
            busy: prev.busy + busy_ns,
            written: prev.written + busy_ns,
            raw: prev.raw + (load * 100.0) as u64 * MS,
        }
    }

    /// Feeds windows of 100 ms at the given raw loads; returns the choice after each.
    fn run(a: &mut AutoCodec, t: &mut u64, tot: &mut Totals, loads: &[f64]) -> Vec<bool> {
        loads
            .iter()
            .map(|l| {
                *t += 100 * MS;
                *tot = window(*tot, *l, 0.5);
                a.compress(*t, *tot)
            })
            .collect()
    }

    #[test]
    fn compresses_while_the_smoothed_raw_load_is_high_with_hysteresis() {
        let (mut a, mut t, mut tot) = (AutoCodec::default(), 0, Totals::default());
        assert!(
            a.compress(0, tot),
            "compressing until a window says otherwise"
        );
        // The first window alone, then smoothed: 0.5, 0.5, 0.5, 1.125, 1.594, 1.945, 1.584,
        // 1.313, 1.110, 0.957.
        assert_eq!(
            run(
                &mut a,
                &mut t,
                &mut tot,
                &[0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 0.5, 0.5, 0.5, 0.5]
            ),
            [false, false, false, false, true, true, true, true, false, false]
        );
    }

    #[test]
    fn one_stalled_window_does_not_switch() {
        let (mut a, mut t, mut tot) = (AutoCodec::default(), 0, Totals::default());
        assert!(a.compress(0, tot));
        // A fast disk (0.5), one stalled window at 10 (counted as 3: 1.125), then fast again
        // (0.969, 0.852); a lasting change does switch (1.389, 1.792).
        assert_eq!(
            run(&mut a, &mut t, &mut tot, &[0.5, 10.0, 0.5, 0.5, 3.5, 3.5]),
            [false, false, false, false, false, true]
        );
    }

    #[test]
    fn the_load_does_not_depend_on_how_busy_the_pipeline_happened_to_be() {
        // A slow disk (250 MB/s) while the pipeline fills: busy only 20 % of the window, but
        // what it wrote took 4 ns a byte against writers making 0.6 bytes a ns.
        let mut a = AutoCodec::default();
        assert!(a.compress(0, Totals::default()));
        assert!(
            a.compress(100 * MS, ms(20, 5, 60)),
            "load 2.4: keep compressing"
        );
        // A fast disk (1.7 GB/s) equally idle: load 0.35: store raw.
        let mut a = AutoCodec::default();
        assert!(a.compress(0, Totals::default()));
        assert!(!a.compress(100 * MS, ms(20, 34, 60)));
    }

    #[test]
    fn a_window_is_judged_only_once_over_and_only_if_it_saw_writes() {
        let mut a = AutoCodec::default();
        let t = |busy: u64, raw: u64| ms(busy, busy, raw);
        // Startup: 300 ms before the first batch: not a verdict.
        assert!(a.compress(300 * MS, t(0, 0)));
        assert!(a.compress(340 * MS, t(10, 30)));
        // The first window is 50 ms long and judged alone: writers at 0.6 of what the disk
        // takes: stored raw from now.
        assert!(!a.compress(350 * MS, t(10, 30)));
        // Later windows are 100 ms long.
        assert!(!a.compress(400 * MS, t(10, 30)));
        // Batches but no write completed in the window: no verdict.
        assert!(!a.compress(450 * MS, t(10, 130)));
        // Writers at six, then ten times the disk's rate (each counted as 3): compressing
        // again after the second (1.2, 1.65).
        assert!(!a.compress(550 * MS, t(60, 730)));
        assert!(a.compress(650 * MS, t(110, 1230)));
        // A long idle stretch (no batch) keeps the decision: it says nothing about the disk.
        assert!(a.compress(10_000 * MS, t(110, 1230)));
        // One light window (0.1) is not enough to stop (1.26), two are (0.97).
        assert!(a.compress(10_100 * MS, t(120, 1240)));
        assert!(!a.compress(10_200 * MS, t(130, 1250)));
    }

    #[test]
    fn a_clock_or_counter_that_goes_back_does_not_panic() {
        let mut a = AutoCodec::default();
        let t = |n: u64| ms(n, n, n);
        assert!(a.compress(0, t(0)));
        assert!(a.compress(200 * MS, t(200)));
        assert!(a.compress(100 * MS, t(50)));
        assert!(a.compress(350 * MS, t(10)));
        assert!(!a.compress(450 * MS, t(20)));
    }
}
