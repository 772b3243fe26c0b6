//! The checkout's output writer. Content workers hand it `(bytes, offset)` pieces and go on
//! reading and decoding while it writes them; at most [`BUDGET`] bytes wait.
//!
//! Why a separate writer: a write into the output file can block for as long as a flush of the
//! disk takes (the write needs a journal handle, and the filesystem's journal commit waits for
//! the flush). Writing from the content workers stopped every worker, and with them the reads
//! of the store, for each flush of the early writeback (measured: PERFORMANCE.md, checkout,
//! ninth session). The writer blocks alone.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use anyhow::{anyhow, Result};
use bytes::Bytes;

/// Bytes handed over and not written yet, at most (a piece larger than this waits until the
/// queue is empty). A piece is a slice of the store's read buffer it came in (up to 8 MiB),
/// which stays taken until its last piece is written: with 128 MiB, so many buffers were out
/// that the pool of read buffers never caught up and a warm checkout of base.img faulted in
/// 85,000 fresh pages (32 MiB: 50,000, 3-6 % faster warm, the same cold; docs/PERFORMANCE.md,
/// checkout, twenty-ninth session).
pub(crate) const BUDGET: u64 = 32 << 20;

#[derive(Default)]
struct State {
    pending: VecDeque<(Bytes, u64)>,
    bytes: u64,
    closed: bool,
    /// The first write that failed; nothing is accepted after it.
    failed: Option<String>,
}

/// A queue of writes into one file, drained by [`Output::run`].
pub(crate) struct Output<'a> {
    file: &'a File,
    path: &'a Path,
    state: Mutex<State>,
    /// Signalled when a piece is queued or the queue closes.
    ready: Condvar,
    /// Signalled when queued bytes were written (or the writer failed).
    space: Condvar,
}

impl<'a> Output<'a> {
    pub(crate) fn new(file: &'a File, path: &'a Path) -> Self {
        Output {
            file,
            path,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            space: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `data` to be written at `at`. Waits while the bytes queued and not yet written
    /// would go past [`BUDGET`] with it (a larger piece waits until nothing is). Fails once a
    /// write has failed or the queue is closed.
    pub(crate) fn put(&self, data: Bytes, at: u64) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        let mut st = self.lock();
        while st.failed.is_none() && !st.closed && st.bytes > 0 && st.bytes + len > BUDGET {
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(e) = &st.failed {
            return Err(anyhow!("{e}"));
        }
        if st.closed {
            return Err(anyhow!(
                "writing {}: the output is closed",
                self.path.display()
            ));
        }
        st.bytes += len;
        st.pending.push_back((data, at));
        drop(st);
        self.ready.notify_one();
        Ok(())
    }

    /// No more pieces: [`Output::run`] returns once the queue is written.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.space.notify_all();
    }

    /// Marks the output failed: queued pieces are dropped, waiting and later puts fail.
    fn fail(&self, why: String) {
        let mut st = self.lock();
        st.failed.get_or_insert(why);
        st.pending.clear();
        st.bytes = 0;
        drop(st);
        self.space.notify_all();
    }

    /// Writes queued pieces until the queue is closed and empty; returns the first failure
    /// (after which queued pieces are dropped and [`Output::put`] fails).
    pub(crate) fn run(&self) -> Result<()> {
        // Should the writer unwind, nobody must wait for it.
        struct Unwinding<'o, 'a>(&'o Output<'a>);
        impl Drop for Unwinding<'_, '_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.fail("the output writer panicked".into());
                }
            }
        }
        let _guard = Unwinding(self);
        loop {
            let batch: Vec<(Bytes, u64)> = {
                let mut st = self.lock();
                while st.pending.is_empty() && !st.closed {
                    st = self.ready.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.pending.is_empty() {
                    return Ok(());
                }
                st.pending.drain(..).collect()
            };
            for (data, at) in &batch {
                if let Err(e) = self.file.write_all_at(data, *at) {
                    let e =
                        anyhow::Error::new(e).context(format!("writing {}", self.path.display()));
                    self.fail(format!("{e:#}"));
                    return Err(e);
                }
                // Room is made piece by piece: a write that waits holds back only its own.
                let mut st = self.lock();
                st.bytes = st.bytes.saturating_sub(data.len() as u64);
                drop(st);
                self.space.notify_all();
            }
        }
    }
}

/// Runs `work` with an [`Output`] on `file` drained by a writer thread; returns `work`'s result,
/// or the writer's failure if `work` succeeded.
pub(crate) fn with_output<T>(
    file: &File,
    path: &Path,
    work: impl FnOnce(&Output) -> Result<T>,
) -> Result<T> {
    /// Closes the queue however `work` ends (unwinding included), so that the writer returns.
    struct Closing<'o, 'a>(&'o Output<'a>);
    impl Drop for Closing<'_, '_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let out = Output::new(file, path);
    std::thread::scope(|s| {
        let writer = s.spawn(|| out.run());
        let r = {
            let _closing = Closing(&out);
            work(&out)
        };
        let w = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the output writer panicked")));
        let v = r?;
        w?;
        Ok(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pieces_land_at_their_offsets_whatever_their_order_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let f = File::create(&path).unwrap();
        // More than the budget in total, one piece larger than the budget on its own.
        let big = (BUDGET + 4096) as usize;
        let pieces: Vec<(u64, u8, usize)> = vec![
            (big as u64 + 10, 2, 1000),
            (0, 1, big),
            (big as u64 + 5000, 3, 70_000),
        ];
        with_output(&f, &path, |out| {
            std::thread::scope(|s| {
                for (at, byte, len) in &pieces {
                    s.spawn(|| out.put(Bytes::from(vec![*byte; *len]), *at).unwrap());
                }
            });
            Ok(())
        })
        .unwrap();
        let mut got = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut got).unwrap();
        for (at, byte, len) in pieces {
            let at = at as usize;
            assert!(
                got[at..at + len].iter().all(|b| *b == byte),
                "piece at {at}"
            );
        }
        assert!(got[big..big + 10].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_failed_write_fails_the_writers_and_the_run_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"x").unwrap();
        // Opened read-only: every write fails.
        let f = File::open(&path).unwrap();
        let r = with_output(&f, &path, |out| {
            for i in 0..1000u64 {
                out.put(Bytes::from(vec![7u8; 1 << 20]), i << 20)?;
            }
            Ok(())
        });
        let e = format!("{:#}", r.unwrap_err());
        assert_eq!(e.matches("writing").count(), 1, "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn nothing_is_accepted_after_close_and_a_panicking_producer_does_not_hang_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let f = File::create(&path).unwrap();
        let out = Output::new(&f, &path);
        out.put(Bytes::from_static(b"abc"), 0).unwrap();
        out.close();
        assert!(out.put(Bytes::from_static(b"def"), 3).is_err());
        out.run().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");

        let r = std::panic::catch_unwind(|| {
            with_output(&f, &path, |out| -> Result<()> {
                out.put(Bytes::from_static(b"xyz"), 0)?;
                panic!("a producer panics");
            })
        });
        assert!(
            r.is_err(),
            "the panic comes through, after the writer returned"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"xyz");
    }
}
