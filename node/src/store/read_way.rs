//! How a long span of a volume that the page cache does not hold is read: past the cache
//! (direct I/O) or through it. Which is faster depends on the host, and by a lot either way:
//! on the project VM a buffered cold read was held to about 570 MB/s by one core's copying into
//! fresh page-cache pages while a direct read ran at the disk's 1.6 GB/s; on the Zen 4 machine
//! of the twenty-fifth session the virtual disk wants many requests in flight, which the
//! kernel's read-ahead gives buffered reads (2.2–2.6 GB/s) and the checkout's few direct reads
//! do not (1.4–2.0 GB/s): a cold checkout of base.img took 1.32–1.40 × cp reading directly
//! and 1.14–1.20 × through the cache (docs/PERFORMANCE.md, checkout, twenty-fifth session).
//!
//! So the store measures. The time of one read says little (it waits behind its neighbours,
//! and read-ahead pays off in later reads), so reads are taken in epochs of [`EPOCH_READS`]
//! reads one way, and an epoch's figure is its bytes over the time during which at least one
//! of its reads was out: the throughput the readers got while they read (time in which
//! nobody reads, as between the spans of a checkin's occasional reads, counts for neither). Each way's throughput is
//! smoothed; every epoch goes the faster way except one in [`EXPLORE`], which goes the other
//! so that a host that changes (another tenant, a cache warming up) is followed. Buffered is
//! the way a short reader starts with and keeps unless direct reads measure faster by
//! [`DIRECT_MARGIN`]: a checkout lives for a few dozen epochs, and with the first one direct and
//! an even choice the noise of single epochs sent a fifth to a third of a cold checkout's
//! spans past the cache on the Zen 4 host, 8-11 % slower than reading all of them buffered
//! (docs/PERFORMANCE.md, checkout, twenty-ninth session). The decision
//! logic is [`Ways`], without I/O: it is told the time. The buffered way brings its own
//! read-ahead (`Volumes::read_span`, windows kept by [`ReadAhead`]): without it, an epoch of buffered reads among direct ones
//! started with none and measured half what reading everything buffered gave.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How a store reads long spans that the page cache does not hold ([`crate::StoreOptions`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanReads {
    /// The way the store has measured to be faster on this host (this module).
    #[default]
    Measured,
    /// Always past the page cache (where the filesystem allows `O_DIRECT`).
    Direct,
    /// Always through the page cache.
    Buffered,
}

impl SpanReads {
    /// The way every read takes, when it is not measured.
    pub(crate) fn forced(self) -> Option<Way> {
        match self {
            SpanReads::Measured => None,
            SpanReads::Direct => Some(Way::Direct),
            SpanReads::Buffered => Some(Way::Buffered),
        }
    }
}

/// A way to read a span from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// Past the page cache (`O_DIRECT`).
    Direct,
    /// Through the page cache.
    Buffered,
}

impl Way {
    fn slot(self) -> usize {
        match self {
            Way::Direct => 0,
            Way::Buffered => 1,
        }
    }

    fn other(self) -> Way {
        match self {
            Way::Direct => Way::Buffered,
            Way::Buffered => Way::Direct,
        }
    }
}

/// Reads of one epoch.
pub(crate) const EPOCH_READS: u32 = 16;
/// One epoch in this many goes the way that looks slower, to keep its figure current.
pub(crate) const EXPLORE: u64 = 16;
/// Weight of a new epoch in a way's smoothed throughput.
const ALPHA: f64 = 0.5;
/// Direct reads are taken only when they measure at least this many times the buffered way's
/// throughput. The way matters when the two differ by a lot (2.8 times on the project VM,
/// where copies into the page cache were slow); between ways that come within this margin an
/// epoch's figure is mostly noise (on the Zen 4 host, single epochs of either way measured
/// 0.6-1.0 GB/s in one cold checkout, the writes of the output competing), and the buffered
/// way, with its read-ahead, was the faster one over whole checkouts: cold base.img 0.93 s
/// reading everything buffered, 0.995 s everything direct, 1.008 s as the epochs chose
/// (eight alternating runs each; docs/PERFORMANCE.md, checkout, twenty-ninth session).
pub(crate) const DIRECT_MARGIN: f64 = 1.5;

/// Reads handed out in one epoch and what has come back of them.
#[derive(Debug)]
struct Epoch {
    id: u64,
    way: Way,
    /// Since when a read of the epoch has been out, while one is.
    busy_since: Option<Instant>,
    /// Time with at least one of its reads out, before `busy_since`.
    busy: Duration,
    picked: u32,
    done: u32,
    bytes: u64,
}

/// A read's ticket: which epoch it counts in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    epoch: u64,
    pub(crate) way: Way,
}

/// The smoothed throughput (bytes per second) of each way, the epoch being handed out and
/// the one before it (whose last reads may still be running).
#[derive(Debug, Default)]
pub(crate) struct Ways {
    rate: [Option<f64>; 2],
    /// Epochs of each way that closed without a figure (every read fell back or failed).
    dry: [u64; 2],
    current: Option<Epoch>,
    closing: Option<Epoch>,
    epochs: u64,
}

impl Ways {
    /// The way for a read starting at `now`.
    pub(crate) fn pick(&mut self, now: Instant) -> Ticket {
        if self
            .current
            .as_ref()
            .is_some_and(|e| e.picked >= EPOCH_READS)
        {
            // Handed out in full: it closes when its reads are back. An older epoch still
            // waiting for a read by then is dropped unmeasured (a read that never returned).
            self.closing = self.current.take();
            self.close_if_done();
        }
        let (way, id) = (self.next_way(), self.epochs);
        let e = match &mut self.current {
            Some(e) => e,
            slot @ None => {
                self.epochs += 1;
                slot.insert(Epoch {
                    id,
                    way,
                    busy_since: None,
                    busy: Duration::ZERO,
                    picked: 0,
                    done: 0,
                    bytes: 0,
                })
            }
        };
        if e.picked == e.done {
            e.busy_since = Some(now);
        }
        e.picked += 1;
        Ticket {
            epoch: e.id,
            way: e.way,
        }
    }

    /// Records that the read of `ticket` ended at `now` with `bytes` read (0: it failed or
    /// went another way, and counts for nothing but its end).
    pub(crate) fn record(&mut self, ticket: Ticket, bytes: u64, now: Instant) {
        for e in [self.current.as_mut(), self.closing.as_mut()]
            .into_iter()
            .flatten()
        {
            if e.id == ticket.epoch {
                e.done += 1;
                e.bytes += bytes;
                if e.done >= e.picked {
                    if let Some(since) = e.busy_since.take() {
                        e.busy += now.saturating_duration_since(since);
                    }
                }
            }
        }
        self.close_if_done();
    }

    /// The smoothed throughput of `way` in bytes per second, once an epoch has measured it.
    pub(crate) fn rate(&self, way: Way) -> Option<f64> {
        self.rate[way.slot()]
    }

    /// The way of the next epoch: each way once (buffered first), then the faster one (direct
    /// only by [`DIRECT_MARGIN`]), except every [`EXPLORE`]th epoch. A direct epoch that
    /// brought no figure (the filesystem refuses `O_DIRECT`, or every read failed) is tried
    /// again only as an exploring one.
    fn next_way(&self) -> Way {
        let exploring = self.epochs % EXPLORE == EXPLORE - 1;
        match self.rate {
            [_, None] => Way::Buffered,
            [None, Some(_)] if self.dry[Way::Direct.slot()] == 0 || exploring => Way::Direct,
            [None, Some(_)] => Way::Buffered,
            [Some(d), Some(b)] => {
                let best = if d >= b * DIRECT_MARGIN {
                    Way::Direct
                } else {
                    Way::Buffered
                };
                if exploring {
                    best.other()
                } else {
                    best
                }
            }
        }
    }

    /// Measures the epochs whose reads are all back: the closing one, and the current one
    /// once it is handed out in full.
    fn close_if_done(&mut self) {
        let done = |e: &Epoch| e.done >= e.picked;
        if self.closing.as_ref().is_some_and(done) {
            let e = self.closing.take();
            self.measure(e);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|e| e.picked >= EPOCH_READS && done(e))
        {
            let e = self.current.take();
            self.measure(e);
        }
    }

    fn measure(&mut self, e: Option<Epoch>) {
        let Some(e) = e else { return };
        if e.bytes == 0 {
            self.dry[e.way.slot()] += 1;
            return;
        }
        let took = e.busy.max(Duration::from_micros(1));
        let r = e.bytes as f64 / took.as_secs_f64();
        let slot = &mut self.rate[e.way.slot()];
        *slot = Some(match *slot {
            None => r,
            Some(old) => old + (r - old) * ALPHA,
        });
    }
}

/// Bytes the buffered way asks the kernel to read ahead of each of its reads.
pub(crate) const READ_AHEAD: u64 = 8 << 20;

/// The buffered way's last few read-ahead windows and the ends of its last few reads.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    /// (volume, start, end) of each window asked for.
    windows: std::collections::VecDeque<(u32, u64, u64)>,
    /// (volume, end) of each read.
    reads: std::collections::VecDeque<(u32, u64)>,
}

impl ReadAhead {
    /// Windows and reads remembered: a few per content worker.
    const KEEP: usize = 16;

    pub(crate) fn add(&mut self, id: u32, start: u64, end: u64) {
        if self.windows.len() == Self::KEEP {
            self.windows.pop_front();
        }
        self.windows.push_back((id, start, end));
    }

    /// Whether `offset..offset + len` of volume `id` lies wholly in a recent window.
    pub(crate) fn covers(&self, id: u32, offset: u64, len: u64) -> bool {
        self.windows
            .iter()
            .any(|&(v, s, e)| v == id && s <= offset && offset + len <= e)
    }

    /// Notes a read of `start..end` of volume `id`; says whether it goes on from a recent
    /// read or window (starts within [`READ_AHEAD`] past where one ended, or inside a window).
    pub(crate) fn follows(&mut self, id: u32, start: u64, end: u64) -> bool {
        let near = |v: u32, e: u64| v == id && e <= start + READ_AHEAD && start <= e + READ_AHEAD;
        let follows = self.reads.iter().any(|&(v, e)| near(v, e))
            || self
                .windows
                .iter()
                .any(|&(v, s, e)| v == id && s <= start && start < e);
        if self.reads.len() == Self::KEEP {
            self.reads.pop_front();
        }
        self.reads.push_back((id, end));
        follows
    }
}

/// [`Ways`] shared by the readers of one store.
#[derive(Debug, Default)]
pub(crate) struct ReadWays(Mutex<Ways>);

impl ReadWays {
    pub(crate) fn pick(&self) -> Ticket {
        self.0.lock().pick(Instant::now())
    }

    pub(crate) fn record(&self, ticket: Ticket, bytes: u64) {
        let mut w = self.0.lock();
        w.record(ticket, bytes, Instant::now());
        tracing::trace!(
            way = ?ticket.way,
            bytes,
            direct = ?w.rate(Way::Direct),
            buffered = ?w.rate(Way::Buffered),
            "span read"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// `n` reads of 8 MiB by `readers` readers side by side, each way delivering what `speed`
    /// says (bytes per second, all readers together); returns the reads taken each way.
    fn run(
        w: &mut Ways,
        t: &mut Instant,
        n: u64,
        readers: u64,
        speed: impl Fn(Way) -> f64,
    ) -> [u64; 2] {
        let mut taken = [0; 2];
        for _ in 0..n / readers {
            let tickets: Vec<Ticket> = (0..readers).map(|_| w.pick(*t)).collect();
            // The round takes as long as the slowest way in it needs for its reads.
            let mut took = Duration::ZERO;
            for tk in &tickets {
                taken[tk.way.slot()] += 1;
                took = took.max(Duration::from_secs_f64(
                    (readers * 8 * MIB) as f64 / speed(tk.way),
                ));
            }
            *t += took;
            for tk in tickets {
                w.record(tk, 8 * MIB, *t);
            }
        }
        taken
    }

    #[test]
    fn each_way_is_measured_then_the_faster_one_is_taken() {
        let (mut w, mut t) = (Ways::default(), Instant::now());
        let speed = |way| match way {
            Way::Direct => 1.6e9,
            Way::Buffered => 2.4e9,
        };
        let e = u64::from(EPOCH_READS);
        // The first epoch goes buffered, the second direct.
        assert_eq!(run(&mut w, &mut t, e, 1, speed), [0, e]);
        assert_eq!(run(&mut w, &mut t, e, 1, speed), [e, 0]);
        let r = w.rate(Way::Buffered).unwrap();
        assert!((r / 2.4e9 - 1.0).abs() < 0.01, "{r}");
        // Buffered is faster: one epoch in EXPLORE goes direct.
        let taken = run(&mut w, &mut t, e * 8 * EXPLORE, 1, speed);
        assert_eq!(taken[Way::Direct.slot()], e * 8, "{taken:?}");
    }

    #[test]
    fn a_host_that_changes_is_followed() {
        let (mut w, mut t) = (Ways::default(), Instant::now());
        let e = u64::from(EPOCH_READS);
        // The project VM: page-cache copies are slow, the disk is fast.
        let taken = run(&mut w, &mut t, e * 40, 4, |way| match way {
            Way::Direct => 1.6e9,
            Way::Buffered => 0.57e9,
        });
        assert!(taken[Way::Direct.slot()] > e * 30, "{taken:?}");
        // Then buffered reads get faster than direct ones: the exploring epochs find it out.
        let faster = |way| match way {
            Way::Direct => 1.6e9,
            Way::Buffered => 2.5e9,
        };
        run(&mut w, &mut t, e * 40, 4, faster);
        let taken = run(&mut w, &mut t, e * 2 * EXPLORE, 4, faster);
        assert_eq!(
            taken[Way::Buffered.slot()],
            e * (2 * EXPLORE - 2),
            "{taken:?}"
        );
    }

    #[test]
    fn direct_reads_are_taken_only_when_they_are_faster_by_the_margin() {
        let e = u64::from(EPOCH_READS);
        for (ratio, direct_wins) in [(1.3, false), (DIRECT_MARGIN * 0.98, false), (1.7, true)] {
            let (mut w, mut t) = (Ways::default(), Instant::now());
            let speed = |way| match way {
                Way::Direct => 1e9 * ratio,
                Way::Buffered => 1e9,
            };
            run(&mut w, &mut t, e * 2, 4, speed);
            let taken = run(&mut w, &mut t, e * 8 * EXPLORE, 4, speed);
            let (best, explored) = if direct_wins {
                (Way::Direct, Way::Buffered)
            } else {
                (Way::Buffered, Way::Direct)
            };
            assert_eq!(
                taken[best.slot()],
                e * 8 * (EXPLORE - 1),
                "{ratio}: {taken:?}"
            );
            assert_eq!(taken[explored.slot()], e * 8, "{ratio}: {taken:?}");
        }
    }

    #[test]
    fn a_way_that_never_delivers_is_left_to_exploring_epochs() {
        let (mut w, t) = (Ways::default(), Instant::now());
        let e = u64::from(EPOCH_READS);
        // Buffered reads deliver, every direct read falls back (no O_DIRECT here).
        let mut taken = [0u64; 2];
        for _ in 0..e * 2 * EXPLORE {
            let tk = w.pick(t);
            taken[tk.way.slot()] += 1;
            let got = if tk.way == Way::Buffered { MIB } else { 0 };
            w.record(tk, got, t + Duration::from_millis(1));
        }
        assert_eq!(w.rate(Way::Direct), None);
        // The second epoch tried direct; after it, only exploring epochs do.
        assert!(taken[Way::Direct.slot()] <= e * 3, "{taken:?}");
        assert!(
            taken[Way::Buffered.slot()] >= e * (2 * EXPLORE - 3),
            "{taken:?}"
        );
    }

    #[test]
    fn an_epoch_counts_when_its_last_read_is_back() {
        let (mut w, t0) = (Ways::default(), Instant::now());
        let first: Vec<Ticket> = (0..EPOCH_READS).map(|_| w.pick(t0)).collect();
        // The next epoch starts while the first's reads are out; it is not measured yet.
        let next = w.pick(t0);
        assert_eq!(next.way, Way::Buffered, "no figure yet: still buffered");
        for (i, tk) in first.iter().enumerate() {
            assert_eq!(w.rate(Way::Buffered), None);
            w.record(*tk, MIB, t0 + Duration::from_millis(1 + i as u64));
        }
        // 16 MiB over 16 ms.
        let r = w.rate(Way::Buffered).unwrap();
        assert!((r - (16 * MIB) as f64 / 0.016).abs() < 1.0, "{r}");
    }

    #[test]
    fn time_in_which_nobody_reads_counts_for_nothing() {
        let (mut w, t0) = (Ways::default(), Instant::now());
        // One read of 1 MiB in 1 ms, a second apart: 1 MiB per ms, not per second.
        for i in 0..u64::from(EPOCH_READS) {
            let at = t0 + Duration::from_secs(i);
            let tk = w.pick(at);
            w.record(tk, MIB, at + Duration::from_millis(1));
        }
        let r = w.rate(Way::Buffered).unwrap();
        assert!((r - MIB as f64 / 0.001).abs() < 1.0, "{r}");
        // Two reads out together count their common time once.
        let e = u64::from(EPOCH_READS);
        let t1 = t0 + Duration::from_secs(e);
        for i in 0..e / 2 {
            let at = t1 + Duration::from_secs(i);
            let (a, b) = (w.pick(at), w.pick(at));
            w.record(a, MIB, at + Duration::from_millis(1));
            w.record(b, MIB, at + Duration::from_millis(2));
        }
        let r = w.rate(Way::Direct).unwrap();
        assert!((r - MIB as f64 / 0.001).abs() < 1.0, "{r}");
    }

    #[test]
    fn failed_reads_teach_nothing() {
        let (mut w, t) = (Ways::default(), Instant::now());
        for _ in 0..=EPOCH_READS {
            let tk = w.pick(t);
            w.record(tk, 0, t + Duration::from_secs(1));
        }
        assert_eq!(w.rate(Way::Buffered), None);
        assert_eq!(w.pick(t).way, Way::Buffered);
    }

    #[test]
    fn read_ahead_windows_cover_what_lies_wholly_inside_the_last_few() {
        let mut a = ReadAhead::default();
        a.add(1, 100, 200);
        assert!(a.covers(1, 100, 100));
        assert!(a.covers(1, 150, 10));
        assert!(!a.covers(1, 150, 60), "past the window's end");
        assert!(!a.covers(1, 90, 20), "before its start");
        assert!(!a.covers(2, 150, 10), "another volume");
        for i in 0..ReadAhead::KEEP as u64 {
            a.add(1, 1000 + i * 10, 1010 + i * 10);
        }
        assert!(!a.covers(1, 150, 10), "the oldest window is forgotten");
        assert!(a.covers(1, 1000, 10));
    }

    #[test]
    fn reads_are_read_ahead_of_only_when_they_go_on_from_recent_ones() {
        let mut a = ReadAhead::default();
        let mib = 1 << 20;
        assert!(!a.follows(1, 100 * mib, 108 * mib), "a first read");
        assert!(a.follows(1, 108 * mib, 116 * mib), "the next span");
        assert!(a.follows(1, 120 * mib, 128 * mib), "past a gap of 4 MiB");
        assert!(!a.follows(1, 900 * mib, 901 * mib), "far away");
        assert!(!a.follows(2, 128 * mib, 130 * mib), "another volume");
        a.add(1, 500 * mib, 508 * mib);
        assert!(a.follows(1, 503 * mib, 504 * mib), "inside a window");
    }
}
