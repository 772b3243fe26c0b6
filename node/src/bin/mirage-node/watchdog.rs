//! Restart in place after a storage failure. A store that failed a write (a full disk, an I/O
//! error) refuses every later write, and a Raft log that failed stops the catalog replica:
//! neither can tell which of its last bytes are whole. The node keeps serving reads; once its
//! disk has room again (5 % of it, at least 64 MiB, at most 1 GiB) it restarts itself in place (exec: the same pid and arguments), which
//! the store sees as a crash: recovery at open re-scans the volume tails, re-indexes the
//! durable records and drops torn ones, and the Raft replica catches up from the leader.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirage_node::raft::CatalogRaft;
use mirage_node::Store;
use openraft::async_runtime::watch::WatchReceiver;

/// Free space the disk needs before the node restarts to recover: 5 % of the filesystem,
/// between 64 MiB and 1 GiB (recovery flushes the index's log into new files, and a node that
/// restarts onto a disk it fills again at once only fails its start).
fn room_needed(size: u64) -> u64 {
    (size / 20).clamp(64 << 20, 1 << 30)
}
/// How often the store and the Raft replica are looked at.
const EVERY: Duration = Duration::from_secs(2);

/// Watches `store` (in `dir`) and, on a cluster node, its catalog replica, until `stopping`
/// is set (a node shutting down stops its replica: that is no failure to restart from).
pub fn spawn(store: Store, dir: PathBuf, raft: Option<CatalogRaft>, stopping: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut said = None::<Instant>;
        loop {
            tokio::time::sleep(EVERY).await;
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            let store_failed = !store.writable();
            let raft_failed = raft.as_ref().is_some_and(|r| {
                matches!(
                    r.metrics().borrow_watched().running_state,
                    Err(ref f) if !matches!(f, openraft::errors::Fatal::Stopped)
                )
            });
            if !store_failed && !raft_failed {
                continue;
            }
            let (room, need) = rustix::fs::statvfs(&dir)
                .map(|s| {
                    (
                        s.f_bavail.saturating_mul(s.f_frsize),
                        room_needed(s.f_blocks.saturating_mul(s.f_frsize)),
                    )
                })
                .unwrap_or((0, u64::MAX));
            if room < need {
                if said.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::error!(
                        store_failed,
                        raft_failed,
                        free_bytes = room,
                        "storage failure: serving reads only; restarting once {} has {} MiB free",
                        dir.display(),
                        need >> 20
                    );
                    said = Some(Instant::now());
                }
                continue;
            }
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            tracing::error!(
                store_failed,
                raft_failed,
                "storage failure: restarting in place to recover"
            );
            let err = match std::env::current_exe() {
                Ok(exe) => std::process::Command::new(exe)
                    .args(std::env::args_os().skip(1))
                    .exec(),
                Err(e) => e,
            };
            tracing::error!(error = %err, "restart after a storage failure failed; exiting");
            std::process::exit(75);
        }
    });
}
