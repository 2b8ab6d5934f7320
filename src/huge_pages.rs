//! Whether the kernel may back this process's memory with transparent huge pages
//! (`processor.transparent_huge_pages`).
//!
//! The allocator asks for huge pages on its arenas, and where the kernel grants them each
//! first touch of fresh memory clears 2 MB at once: on the machines measured that made a
//! restore slower and the steady state no faster (figures in `docs/benchmarks.md`), so they
//! are off by default; on hosts where they pay, an operator turns them on.

use std::io;

/// Allows (or forbids) transparent huge pages for the memory this process touches from now
/// on (Linux `PR_SET_THP_DISABLE`; child processes inherit it). Elsewhere it does nothing.
pub fn allow(allowed: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let disable = libc::c_ulong::from(!allowed);
        let zero: libc::c_ulong = 0;
        // SAFETY: PR_SET_THP_DISABLE reads its integer arguments only; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, zero, zero, zero) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allowed;
    Ok(())
}

/// Whether transparent huge pages are allowed for this process (`None` where it cannot be
/// asked).
pub fn allowed() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        let zero: libc::c_ulong = 0;
        // SAFETY: PR_GET_THP_DISABLE takes no pointer and returns the flag.
        let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, zero, zero, zero, zero) };
        (rc >= 0).then_some(rc == 0)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_setting_is_what_the_kernel_reports_for_the_process() {
        allow(false).unwrap();
        assert_eq!(allowed(), Some(false));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("Linux 5.0 on reports it");
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        allow(true).unwrap();
        assert_eq!(allowed(), Some(true));
    }
}
