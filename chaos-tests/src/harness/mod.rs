//! The process-level harness: real `mirage-node` processes, each in a network namespace of its
//! own with a loop-mounted data disk, and the means to hurt them (signals, routes, full disks,
//! flipped bytes).

pub mod cluster;
pub mod disk;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::Command;

/// What can go wrong setting up or driving the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A system command failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output or status.
        message: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster could not be set up or reached.
    #[error("{0}")]
    Setup(String),
}

impl HarnessError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> HarnessError {
        HarnessError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs a system command; its failure is an error naming the command and its output.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<(), HarnessError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command,
            message: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ),
        })
    }
}

/// Whether this process may create network namespaces and mount filesystems (root).
pub fn privileged() -> bool {
    uid() == 0
}

/// The effective user id (from `id -u`: no unsafe code for `geteuid`).
fn uid() -> u32 {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}
