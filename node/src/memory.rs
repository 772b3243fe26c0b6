//! Process-wide memory settings of the `mirage` and `mirage-node` binaries.
//!
//! Transparent huge pages: mimalloc asks for them on its arenas, and the kernel then backs a
//! first write with a whole 2 MiB page that it zeroes on the spot. A checkin streams hundreds
//! of megabytes through short-lived chunk buffers, so it first-touches a few hundred MiB; on a
//! virtual machine whose host has just reclaimed the guest's free memory (after a large copy
//! went through the page cache, say) zeroing those huge pages took 0.7–1.2 s of system time
//! per 640 MB image, against 0.2–0.3 s with 4 KiB pages (PERFORMANCE.md, twelfth session).

/// Turns transparent huge pages off for this process (and the children it starts); a kernel
/// without the switch keeps its default, which is only slower (logged at debug level). Call it
/// at the start of `main`, before threads and large allocations (pages already faulted in keep
/// their size; the setting applies to every later fault).
// prctl is not wrapped by the libraries in use.
#[allow(unsafe_code)]
pub fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and changes only this process's
    // memory policy; no memory is passed to the kernel.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "transparent huge pages stay as the kernel has them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether transparent huge pages are off for this process.
    #[allow(unsafe_code)]
    fn transparent_huge_pages_disabled() -> std::io::Result<bool> {
        // SAFETY: as above; PR_GET_THP_DISABLE returns the flag.
        let r = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r == 1)
        }
    }

    #[test]
    fn huge_pages_are_off_after_the_call_and_the_kernel_says_so() {
        no_transparent_huge_pages();
        assert!(transparent_huge_pages_disabled().unwrap());
        // The kernel's own view of this process (Linux 6.x prints "THP_enabled").
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }
}
