//! The async runtime openraft runs on in the simulation: tokio with three sources of
//! nondeterminism removed.
//!
//! - Randomness: openraft draws election timeouts and tick jitter from
//!   `AsyncRuntime::thread_rng()`; [`DeterministicRng`] makes that a seeded generator carried
//!   by the task tree (a host's root future runs in [`SimRt::scope`]).
//! - Wake-up order: `tokio::sync::watch` spreads a channel's waiters over eight `Notify`s
//!   picked with tokio's own per-runtime random generator (seeded from the OS, and only
//!   settable with `tokio_unstable`), so two tasks waiting on one watch wake in a different
//!   order from run to run (two replication streams sending in a different order, for
//!   instance). [`DetWatch`] is a watch channel over a single `tokio::sync::Notify`, whose
//!   waiters wake in a fixed order.
//! - Drop order on a crash: tokio keeps a runtime's spawned tasks in lists sharded by task id,
//!   a process-wide counter, and drops them shard by shard when the runtime goes (which is
//!   how turmoil crashes a host); the connections those tasks own then close in an order that
//!   depends on how many tasks the process spawned before. Tasks are spawned on the host's
//!   `LocalSet` instead ([`LocalTokio`]), one list in spawn order.
//!
//! Everything else (timers, channels, locks) is tokio's, delegated unchanged.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use openraft::rt::deterministic_rng::DeterministicRng;
use openraft::rt::task_local::TaskLocalFuture;
use openraft::rt::watch::{RecvError, SendError, Watch, WatchReceiver, WatchSender};
use openraft::rt::{AsyncRuntime, OptionalSend, OptionalSync};
use tokio::sync::Notify;

/// Tokio as openraft drives it (the re-export is deprecated in favour of a crate this one does
/// not depend on; it is the same type).
#[allow(deprecated)]
type Tokio = openraft::impls::TokioRuntime;

/// Tokio with tasks spawned on the current `LocalSet` and deterministic watch channels.
#[derive(Debug)]
pub struct LocalTokio(Tokio);

/// The simulation's runtime: [`LocalTokio`] with seeded randomness.
pub type SimRt = DeterministicRng<LocalTokio>;

/// Runs `fut` with `seed` as the seed of its task tree's randomness.
pub fn scope<F: Future>(seed: u64, fut: F) -> TaskLocalFuture<std::cell::Cell<u64>, F> {
    SimRt::scope(seed, fut)
}

impl AsyncRuntime for LocalTokio {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = DetWatch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    /// Spawns on the current `LocalSet` (every simulated host runs in one).
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn_local(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }

    fn new(threads: usize) -> Self {
        LocalTokio(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Tokio::spawn_blocking(f)
    }
}

/// A watch channel whose receivers wake in a fixed order.
#[derive(Debug)]
pub struct DetWatch;

#[derive(Debug)]
struct Shared<T> {
    /// The value and its version (one more per change).
    value: RwLock<(T, u64)>,
    notify: Notify,
    senders: AtomicUsize,
    receivers: AtomicUsize,
}

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, (T, u64)> {
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, (T, u64)> {
        self.value.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half of a [`DetWatch`] channel.
#[derive(Debug)]
pub struct DetSender<T>(Arc<Shared<T>>);

/// The receiving half of a [`DetWatch`] channel.
#[derive(Debug)]
pub struct DetReceiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// A borrowed value of a [`DetWatch`] channel.
#[derive(Debug)]
pub struct DetRef<'a, T>(RwLockReadGuard<'a, (T, u64)>);

impl<T> std::ops::Deref for DetRef<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0 .0
    }
}

impl<T> Clone for DetSender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        DetSender(self.0.clone())
    }
}

impl<T> Drop for DetSender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.notify.notify_waiters();
        }
    }
}

impl<T> Clone for DetReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::Relaxed);
        DetReceiver {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Drop for DetReceiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Watch for DetWatch {
    type Sender<T: OptionalSend + OptionalSync> = DetSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = DetReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = DetRef<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (DetSender<T>, DetReceiver<T>) {
        let shared = Arc::new(Shared {
            value: RwLock::new((init, 0)),
            notify: Notify::new(),
            senders: AtomicUsize::new(1),
            receivers: AtomicUsize::new(1),
        });
        (DetSender(shared.clone()), DetReceiver { shared, seen: 0 })
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<DetWatch, T> for DetSender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        // As tokio's: refused once every receiver is gone.
        if self.0.receivers.load(Ordering::Relaxed) == 0 {
            return Err(SendError(value));
        }
        self.send_if_modified(|v| {
            *v = value;
            true
        });
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let changed = {
            let mut g = self.0.write();
            let changed = modify(&mut g.0);
            if changed {
                g.1 += 1;
            }
            changed
        };
        if changed {
            self.0.notify.notify_waiters();
        }
        changed
    }

    fn borrow_watched(&self) -> DetRef<'_, T> {
        DetRef(self.0.read())
    }

    fn subscribe(&self) -> DetReceiver<T> {
        self.0.receivers.fetch_add(1, Ordering::Relaxed);
        let seen = self.0.read().1;
        DetReceiver {
            shared: self.0.clone(),
            seen,
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<DetWatch, T> for DetReceiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            // Registered before the version is read: a change made after the read wakes it.
            let notified = self.shared.notify.notified();
            let version = self.shared.read().1;
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.senders.load(Ordering::Relaxed) == 0 {
                return Err(RecvError(()));
            }
            notified.await;
        }
    }

    fn borrow_watched(&self) -> DetRef<'_, T> {
        DetRef(self.shared.read())
    }

    fn borrow_and_update(&mut self) -> DetRef<'_, T> {
        let g = self.shared.read();
        self.seen = g.1;
        DetRef(g)
    }
}
