//! Two `unsafe` libc calls that are no io_uring operation:
//! [`trim_heap`] (libc's `malloc_trim`), which hands memory freed after a
//! burst back to the OS, and [`adopt_received`], which takes ownership of
//! the descriptors a hot upgrade receives over its control socket.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Gives the heap's free pages back to the OS (glibc's `malloc_trim`), after
/// a burst of connections freed their memory: glibc keeps freed memory in its
/// arenas otherwise, so RSS would stay at the burst's peak. Walks every
/// arena, so it is for after a burst, not for every connection.
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and only rearranges the
    // allocator's own free lists under its own locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Takes ownership of descriptors the kernel installed in this process for
/// a message received with SCM_RIGHTS, so they are closed when dropped.
pub fn adopt_received(fds: &[RawFd]) -> Vec<OwnedFd> {
    fds.iter()
        // SAFETY: recvmsg(2) just installed each of these descriptors in our
        // table for the message we read; nothing else in the process knows
        // their numbers, so each gets exactly one owner, here.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}
