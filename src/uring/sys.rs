//! The `unsafe` libc calls that are no io_uring operation:
//! [`trim_heap`] (libc's `malloc_trim`), which hands memory freed after a
//! burst back to the OS; [`recv_with_fds`], which receives a message of the
//! hot upgrade's control socket and takes ownership of every descriptor it
//! carried, even when it was truncated; and [`effective_uid`], which the
//! control socket's peer must share.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// One message read by [`recv_with_fds`].
#[derive(Debug)]
pub struct WithFds {
    /// Bytes of data read (0: the other side closed).
    pub bytes: usize,
    /// Every descriptor the kernel installed for the message, now owned.
    pub fds: Vec<OwnedFd>,
    /// The kernel set `MSG_CTRUNC`: the control data did not fit, so
    /// descriptors past the buffer were dropped (closed by the kernel).
    pub truncated: bool,
}

/// Reads one message into `buf` with room for `max_fds` SCM_RIGHTS
/// descriptors (close-on-exec), and takes ownership of every descriptor the
/// kernel installed, truncated or not, so none outlives a failure. (nix's
/// `cmsgs()` refuses a truncated message outright, which would leave the
/// installed descriptors without an owner.)
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<WithFds> {
    let data_len = u32::try_from(max_fds * size_of::<RawFd>())
        .map_err(|_| io::Error::other(format!("room for {max_fds} descriptors is too large")))?;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `iov` (which points into `buf`) and at
    // `control`, all alive and exclusively borrowed for the call, with their
    // true lengths; recvmsg writes only within them.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    let end = control.as_ptr() as usize + msg.msg_controllen.min(space);
    // SAFETY: `msg` is the header recvmsg just filled in; CMSG_FIRSTHDR
    // reads its msg_control and msg_controllen only.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a header
        // that lies whole inside the msg_controllen bytes the kernel wrote,
        // aligned (the buffer is u64-aligned and the kernel aligns each).
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: as above, `cmsg` is a valid header inside `control`.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            // The kernel sets cmsg_len to the descriptors it installed, also
            // when it truncated; bounded by the buffer all the same.
            let len = (cmsg as usize + hdr.cmsg_len as usize).min(end);
            let count = len.saturating_sub(data as usize) / size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: entry i lies inside this header's data, within
                // `control`; read_unaligned needs no alignment.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: recvmsg(2) just installed this descriptor in our
                // table for the message we read; nothing else in the process
                // knows its number, so it gets exactly one owner, here.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `cmsg` is a header of `msg`'s control data; CMSG_NXTHDR
        // returns the next one or null past msg_controllen.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(WithFds {
        bytes: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// This process's effective user id: a control socket's peer must run as
/// it (or as root).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}
