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
//! half; it starts at [`LOAD_ON`]), at or above [`LOAD_ON`] the disk is what holds the writers
//! back, and batches are compressed (LZ4); below [`LOAD_OFF`] they are stored as
//! they are; in between the choice stays. A window with no batch or no completed write, or
//! that an idle spell stretched past two window lengths, says nothing and is not judged. On a
//! disk that takes raw bytes as fast as the writers make them nothing is compressed; on a slow
//! one, everything is. `mirage store compact` recompresses with zstd later either way.
//!
//! Switching compression **on** also needs the process's CPU to have room
//! ([`CPU_ROOM`] of the cores, smoothed the same way): a disk that is busy while the
//! writers already keep the cores busy would not finish sooner with LZ4 added to their work
//! (on two cores, a raw load of 0.9 with the CPU at 90 % was slower with LZ4 than without).
//! While raw bytes saturate a slow disk the writers mostly wait, so the CPU has room. And a
//! window in which the disk took raw bytes as fast as they came ([`LOAD_ON`]) while the
//! writers filled [`CPU_FULL`] of the cores switches compression **off** at once, whatever the
//! smoothed load: one sync that stalls for a window (seen on this VM's disk) would otherwise
//! keep LZ4 on busy cores for three or four windows, most of a derived image's checkin.
//!
//! Measured on the project VM (base.img, 640 MB of new content; docs/PERFORMANCE.md): direct
//! writes at about 1.7 GB/s against writers submitting about 1 GB/s raw; with the disk
//! throttled to 250 MB/s the raw load is above 2 while compressing and about 0.9 raw (the
//! writers then wait for the disk).

/// Length of a measurement window.
pub(crate) const WINDOW_NS: u64 = 100_000_000;
/// Raw load at or above which batches are compressed.
pub(crate) const LOAD_ON: f64 = 0.9;
/// Raw load below which they are stored raw again.
pub(crate) const LOAD_OFF: f64 = 0.75;
/// Share of the cores the process may use for compression to be switched on.
pub(crate) const CPU_ROOM: f64 = 0.7;
/// Share of the cores at which the writers are taken to be CPU-bound.
pub(crate) const CPU_FULL: f64 = 0.9;
/// How far into the first window the CPU is looked at once (see [`AutoCodec::compress`]).
pub(crate) const FIRST_LOOK_NS: u64 = 25_000_000;

/// Running totals the store keeps (all monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Nanoseconds spent writing and syncing volumes.
    pub(crate) busy: u64,
    /// Bytes written to volumes.
    pub(crate) written: u64,
    /// Record bytes writers submitted, counted before compression.
    pub(crate) raw: u64,
    /// CPU time of the whole process, nanoseconds.
    pub(crate) cpu: u64,
}

/// The decision and the window it is being measured over.
#[derive(Debug)]
pub(crate) struct AutoCodec {
    window_start: u64,
    at_start: Totals,
    /// Batches prepared in the current window.
    batches: u32,
    /// The raw load, smoothed over windows (each window weighs half).
    load: f64,
    /// The process's share of the cores, smoothed the same way from the first window's
    /// figure (a start at 0 halved that figure and switched LZ4 on for busy cores).
    cpu: Option<f64>,
    cores: f64,
    compress: bool,
    /// The first window's early look at the CPU is done (or a window was judged).
    looked: bool,
}

impl Default for AutoCodec {
    /// Compressing until a window shows the disk keeping up: on a fast disk that costs one
    /// window of compression; starting raw on a slow one would cost a window's worth of
    /// uncompressed bytes queued behind the disk.
    fn default() -> Self {
        AutoCodec {
            window_start: 0,
            at_start: Totals::default(),
            batches: 0,
            load: LOAD_ON,
            cpu: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            compress: true,
            looked: false,
        }
    }
}

impl AutoCodec {
    /// Whether to compress the batch being prepared at `now` (nanoseconds on a monotonic
    /// clock), given the store's running totals.
    ///
    /// Once, [`FIRST_LOOK_NS`] into the first window, the CPU alone is looked at: writers
    /// that already keep [`CPU_ROOM`] of the cores busy switch compression off before any
    /// write has told how fast the disk is (it could not be switched on with the CPU that
    /// busy). A checkin hashing on every core then spends 25 ms, not a whole window, on LZ4
    /// it cannot gain from (docs/PERFORMANCE.md, fourteenth session); on a slow disk the
    /// writers soon wait, the CPU frees up, and the next window switches it back on.
    pub(crate) fn compress(&mut self, now: u64, totals: Totals) -> bool {
        let elapsed = now.saturating_sub(self.window_start);
        let d = |f: fn(&Totals) -> u64| f(&totals).saturating_sub(f(&self.at_start));
        let cpu = || d(|t| t.cpu) as f64 / (elapsed.max(1) as f64 * self.cores);
        if elapsed >= WINDOW_NS {
            let (busy, written, raw) = (d(|t| t.busy), d(|t| t.written), d(|t| t.raw));
            if self.batches > 0 && elapsed < 2 * WINDOW_NS && busy > 0 && written > 0 {
                // (raw / elapsed) / (written / busy)
                let load = raw as f64 * busy as f64 / (elapsed as f64 * written as f64);
                tracing::trace!(
                    elapsed,
                    busy,
                    written,
                    raw,
                    load,
                    cpu = cpu(),
                    "auto codec window"
                );
                self.judge(load, cpu());
                self.looked = true;
            }
            self.window_start = now;
            self.at_start = totals;
            self.batches = 0;
        } else if !self.looked && self.batches > 0 && elapsed >= FIRST_LOOK_NS {
            self.looked = true;
            let cpu = cpu();
            if self.compress && cpu >= CPU_ROOM {
                self.compress = false;
                tracing::debug!(cpu, "auto codec switched off: no CPU to spare");
            }
        }
        self.batches = self.batches.saturating_add(1);
        self.compress
    }

    fn judge(&mut self, window_load: f64, window_cpu: f64) {
        let was = self.compress;
        self.load = (self.load + window_load) / 2.0;
        let cpu = self.cpu.map_or(window_cpu, |c| (c + window_cpu) / 2.0);
        self.cpu = Some(cpu);
        // A window in which the disk kept up with raw bytes while the writers filled the cores
        // ends compression at once: it was switched on by a stall (one slow sync), and the
        // smoothed load would keep LZ4 on the busy cores for several windows more.
        let cpu_bound = window_load < LOAD_ON && window_cpu >= CPU_FULL;
        if cpu_bound || self.load < LOAD_OFF {
            self.compress = false;
        } else if self.load >= LOAD_ON && cpu < CPU_ROOM {
            self.compress = true;
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
            cpu: 0,
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
            cpu: prev.cpu,
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
        // Smoothed: 0.85, 0.725, 0.6625, 0.78, 0.94, 0.87, 0.685, 1.49.
        assert_eq!(
            run(
                &mut a,
                &mut t,
                &mut tot,
                &[0.8, 0.6, 0.6, 0.9, 1.1, 0.8, 0.5, 2.3]
            ),
            [true, false, false, false, true, true, false, true]
        );
        // One light window after a heavy one is not enough to stop (0.895), two are.
        assert_eq!(
            run(&mut a, &mut t, &mut tot, &[0.3, 0.3, 0.89]),
            [true, false, false]
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
        assert!(a.compress(350 * MS, t(10, 30)));
        // Writers at 0.3 of what the disk takes: stored raw from now.
        assert!(!a.compress(400 * MS, t(20, 30)));
        // Batches but no write completed in the window: no verdict.
        assert!(!a.compress(500 * MS, t(20, 130)));
        // Writers at twice the disk's rate: compressing again.
        assert!(a.compress(600 * MS, t(70, 330)));
        // A long idle stretch (no batch) keeps the decision: it says nothing about the disk.
        assert!(a.compress(10_000 * MS, t(70, 330)));
        assert!(!a.compress(10_100 * MS, t(80, 340)));
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

    #[test]
    fn writers_that_fill_the_cores_stop_compressing_early_and_a_waiting_disk_restarts_it() {
        let mut a = AutoCodec {
            cores: 2.0,
            ..AutoCodec::default()
        };
        let at = |cpu_ms: u64, raw_ms: u64| Totals {
            cpu: cpu_ms * MS,
            raw: raw_ms * MS,
            ..Totals::default()
        };
        // The first batch opens the window; 10 ms in, too early to look.
        assert!(a.compress(1_000 * MS, at(0, 0)));
        assert!(a.compress(1_010 * MS, at(20, 10)));
        // 30 ms in, both cores busy and no write finished yet: raw from now on.
        assert!(!a.compress(1_030 * MS, at(58, 30)));
        // The look is made once.
        assert!(!a.compress(1_050 * MS, at(60, 50)));
        // The writers then wait for a slow disk (raw load near 3, the cores 60 % busy):
        // compressing again.
        let slow = Totals {
            busy: 90 * MS,
            written: 45 * MS,
            raw: 140 * MS,
            cpu: 120 * MS,
        };
        assert!(a.compress(1_100 * MS, slow));
        // Idle cores in the first look leave compression on.
        let mut b = AutoCodec {
            cores: 2.0,
            ..AutoCodec::default()
        };
        assert!(b.compress(0, at(0, 0)));
        assert!(b.compress(1, at(0, 0)));
        assert!(b.compress(30 * MS, at(20, 30)));
    }

    /// A codec for two cores and a clock: [`Cores2::step`] feeds it 100 ms windows.
    struct Cores2 {
        a: AutoCodec,
        t: u64,
        tot: Totals,
    }

    impl Cores2 {
        fn new() -> Self {
            Cores2 {
                a: AutoCodec {
                    cores: 2.0,
                    ..AutoCodec::default()
                },
                t: 0,
                tot: Totals::default(),
            }
        }

        /// The next window: raw load `load`, the writers using `cpu` of the two cores; the
        /// choice for the batch after it.
        fn step(&mut self, load: f64, cpu: f64) -> bool {
            self.t += 100 * MS;
            self.tot = Totals {
                cpu: self.tot.cpu + (cpu * 200.0) as u64 * MS,
                ..window(self.tot, load, 0.5)
            };
            self.a.compress(self.t, self.tot)
        }
    }

    #[test]
    fn a_stall_does_not_keep_full_cores_compressing() {
        // derived-2's checkin (docs/PERFORMANCE.md, twenty-fourth session): one window in
        // which a sync took twice the window for a few MB, the writers waiting; then the disk
        // keeps up again and the writers fill both cores.
        let mut a = Cores2::new();
        a.step(0.3, 1.0);
        assert!(a.step(5.5, 0.45), "a stalled disk, idle cores: compress");
        assert!(
            !a.step(0.25, 0.95),
            "the disk keeps up, the cores are full: raw at once"
        );
        assert!(!a.step(0.3, 0.95));
        // The same light window with cores to spare keeps the smoothed verdict for a while.
        let mut b = Cores2::new();
        b.step(0.3, 0.3);
        assert!(b.step(5.5, 0.3));
        assert!(b.step(0.25, 0.5), "smoothed load 1.5: still compressing");
    }

    #[test]
    fn cores_busy_from_the_start_keep_a_loaded_first_window_raw() {
        // base.img's checkin (docs/PERFORMANCE.md, twenty-eighth session): the first look
        // finds both cores busy; the first window then shows the disk about as busy as the
        // cores. The CPU's smoothed share once started at 0, so that window counted it at
        // half and switched LZ4 on.
        let mut a = Cores2::new();
        assert!(a.a.compress(0, Totals::default()));
        let early = Totals {
            cpu: 58 * MS,
            raw: 30 * MS,
            ..Totals::default()
        };
        assert!(
            !a.a.compress(30 * MS, early),
            "busy cores at the first look: raw"
        );
        a.tot = early;
        assert!(!a.step(1.06, 0.95), "a loaded disk, busy cores: still raw");
        assert!(!a.step(0.84, 0.95));
        // Without a first look, the first window's own figure counts.
        let mut b = Cores2::new();
        assert!(b.a.compress(0, Totals::default()));
        assert!(!b.step(0.5, 0.95));
        assert!(!b.step(1.2, 0.95));
        let mut c = Cores2::new();
        assert!(c.a.compress(0, Totals::default()));
        assert!(c.step(1.2, 0.3), "a loaded disk, idle cores: compress");
    }

    #[test]
    fn a_busy_cpu_keeps_a_saturated_disk_raw() {
        let mut a = Cores2::new();
        // Writers keep 1.8 of two cores busy and the disk at 0.6: stored raw.
        assert!(a.a.compress(0, Totals::default()));
        a.step(0.6, 0.9);
        assert!(!a.step(0.6, 0.9));
        // The disk saturates (a stall, or faster writers) while the CPU stays busy: still raw.
        for _ in 0..5 {
            assert!(!a.step(1.5, 0.9));
        }
        // The same load with the writers waiting (a slow disk): compressing.
        let mut on = false;
        for _ in 0..3 {
            on = a.step(1.5, 0.2);
        }
        assert!(on, "a saturated disk and idle cores: compress");
    }
}
