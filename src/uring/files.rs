//! The worker's table of registered files: the relay names its two sockets
//! by their slot in it ([`FixedPair`], [`Sock`]), which spares the kernel a
//! descriptor lookup per operation. A pair of slots is handed out again only
//! once the kernel has emptied it, so a later pair cannot be clobbered by an
//! earlier removal.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types};
use socket2::SockRef;
use tokio_uring::net::TcpStream;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

/// A socket as the relay's operations name it: by its descriptor, or by its
/// slot in this thread's table of registered files ([`FixedPair`]), which
/// spares the kernel looking the descriptor up (`fget`, `fput`, two atomic
/// counts on a shared cache line) on every operation. Borrows the stream, so
/// the descriptor stays open while it is named.
#[derive(Clone, Copy)]
pub struct Sock<'a> {
    /// The descriptor, for what is not an io_uring operation (shutdown).
    fd: RawFd,
    /// Its slot in the registered table, or [`NO_SLOT`].
    slot: u32,
    /// The stream the descriptor belongs to.
    stream: std::marker::PhantomData<&'a TcpStream>,
}

/// The slot of a socket that is not registered.
const NO_SLOT: u32 = u32::MAX;

impl<'a> From<&'a TcpStream> for Sock<'a> {
    fn from(stream: &'a TcpStream) -> Self {
        Sock {
            fd: stream.as_raw_fd(),
            slot: NO_SLOT,
            stream: std::marker::PhantomData,
        }
    }
}

impl Sock<'_> {
    /// The descriptor, for a system call on the socket (a splice).
    pub(super) fn fd(self) -> RawFd {
        self.fd
    }

    /// The SQE `build` makes for a target descriptor, aimed at this socket:
    /// its slot, flagged as one (IOSQE_FIXED_FILE), when it has one.
    pub(super) fn sqe(self, build: impl FnOnce(types::Fd) -> squeue::Entry) -> squeue::Entry {
        if self.slot == NO_SLOT {
            build(types::Fd(self.fd))
        } else {
            build(types::Fd(self.slot as RawFd)).flags(squeue::Flags::FIXED_FILE)
        }
    }

    /// Shuts the socket down, as `TcpStream::shutdown` does.
    pub fn shutdown(self, how: Shutdown) -> io::Result<()> {
        // SAFETY: the descriptor belongs to a stream borrowed for as long as
        // this `Sock` lives, so it is open; the borrow ends with this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        SockRef::from(&fd).shutdown(how)
    }
}

thread_local! {
    /// This thread's table of registered files, once [`register_file_table`]
    /// set it up.
    static FILES: std::cell::RefCell<Option<FileTable>> = const { std::cell::RefCell::new(None) };
}

/// Which pairs of slots of the registered table are free: every pair from
/// `next` on, and those in `free`, handed back. Grows only as far as the
/// most connections relayed at once, not the table's size.
struct FileTable {
    /// Pairs, by their first slot, that were used and are free again.
    free: Vec<u32>,
    /// The first slot of the first pair never used.
    next: u32,
    /// Slots in the table.
    slots: u32,
}

/// Registers a sparse table of `slots` files with this thread's io_uring
/// (IORING_REGISTER_FILES2, kernel 5.19+; at most the open-file limit), for
/// [`FixedPair`]. Call on the worker's thread, inside its runtime.
pub fn register_file_table(slots: u32) -> io::Result<()> {
    tokio_uring::with_submitter(|s| s.register_files_sparse(slots))
        .unwrap_or_else(|| Err(io::Error::other("not on a tokio-uring runtime")))?;
    FILES.with(|f| {
        *f.borrow_mut() = Some(FileTable {
            free: Vec::new(),
            next: 0,
            slots,
        })
    });
    Ok(())
}

/// Connections whose sockets this thread's table holds now (pairs in use),
/// if it has one.
pub(super) fn pairs_in_use() -> Option<u32> {
    FILES.with(|f| {
        f.borrow()
            .as_ref()
            .map(|t| (t.next / 2).saturating_sub(t.free.len() as u32))
    })
}

/// Forgets this thread's table (it goes with its io_uring).
pub fn release_file_table() {
    FILES.with(|f| f.borrow_mut().take());
}

/// Both sockets of a relayed connection, registered in this thread's table
/// of files for as long as this lives: one `io_uring_register` call to add
/// them, and one IORING_OP_FILES_UPDATE, sent with the next submission, to
/// remove them. The pair of slots is free again only once the kernel has
/// removed them, so a later pair cannot be clobbered by an earlier removal.
pub struct FixedPair<'a> {
    /// The first of the two slots.
    slot: u32,
    /// The sockets.
    socks: (&'a TcpStream, &'a TcpStream),
}

impl<'a> FixedPair<'a> {
    /// Registers `a` and `b`; `None` when this thread has no table, or no
    /// free pair of slots in it, or the kernel refuses: then name the
    /// sockets by descriptor.
    pub fn register(a: &'a TcpStream, b: &'a TcpStream) -> Option<Self> {
        let slot = FILES.with(|f| {
            let mut f = f.borrow_mut();
            let table = f.as_mut()?;
            table.free.pop().or_else(|| {
                (table.next + 2 <= table.slots).then(|| {
                    table.next += 2;
                    table.next - 2
                })
            })
        })?;
        let fds = [a.as_raw_fd(), b.as_raw_fd()];
        match tokio_uring::with_submitter(|s| s.register_files_update(slot, &fds)) {
            Some(Ok(2)) => Some(FixedPair {
                slot,
                socks: (a, b),
            }),
            _ => {
                // Whatever it took is replaced by the next pair to use it.
                free_pair(slot);
                None
            }
        }
    }

    /// The two sockets, named by their slots.
    pub fn socks(&self) -> (Sock<'_>, Sock<'_>) {
        let named = |stream, slot| Sock {
            slot,
            ..Sock::from(stream)
        };
        (
            named(self.socks.0, self.slot),
            named(self.socks.1, self.slot + 1),
        )
    }
}

impl Drop for FixedPair<'_> {
    fn drop(&mut self) {
        let removal = Box::new(Removal {
            fds: [-1, -1],
            slot: self.slot,
        });
        let sqe = opcode::FilesUpdate::new(removal.fds.as_ptr(), 2)
            .offset(self.slot as i32)
            .build();
        // Dropped at once: the driver keeps the removal until the kernel
        // completes it, and then drops it, which frees the pair. The fds
        // array is in the box, so it does not move meanwhile.
        drop(UnsubmittedOneshot::new(removal, RemovalDone, sqe).submit());
    }
}

/// A removal of a pair of slots, in flight.
struct Removal {
    /// What the slots become: empty.
    fds: [RawFd; 2],
    /// The first slot.
    slot: u32,
}

impl Drop for Removal {
    fn drop(&mut self) {
        free_pair(self.slot);
    }
}

/// Hands the pair of slots starting at `slot` back to this thread's table.
fn free_pair(slot: u32) {
    // The driver may drop a removal as the thread ends, after the table.
    let _ = FILES.try_with(|f| {
        if let Some(table) = f.borrow_mut().as_mut() {
            table.free.push(slot);
        }
    });
}

/// The completion of a removal: nothing to report (a slot the kernel could
/// not empty is overwritten by the next registration in it).
struct RemovalDone;

impl OneshotOutputTransform for RemovalDone {
    type Output = ();
    type StoredData = Box<Removal>;

    fn transform_oneshot_output(self, _: Box<Removal>, _: cqueue::Entry) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair;
    use crate::uring::{recv, send_all};
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn fixed_pairs_carry_bytes_and_free_their_slots_once_removed() {
        tokio_uring::start(async {
            let (mut pa, a) = pair();
            let (mut pb, b) = pair();
            assert!(FixedPair::register(&a, &b).is_none(), "no table yet");
            register_file_table(4).unwrap();
            let first = FixedPair::register(&a, &b).expect("a free pair");
            let (sa, sb) = first.socks();
            assert_eq!((sa.slot, sb.slot), (0, 1));
            // Operations by slot reach the right sockets.
            let (res, _) = send_all(sa, b"to a".to_vec()).await;
            res.unwrap();
            let mut got = [0u8; 4];
            std::io::Read::read_exact(&mut pa, &mut got).unwrap();
            assert_eq!(&got, b"to a");
            pb.write_all(b"from b").unwrap();
            let (res, buf) = recv(sb, Vec::with_capacity(16), false).await;
            assert_eq!((res.unwrap(), &buf[..]), (6, &b"from b"[..]));
            // Two pairs fill four slots.
            let (_pc, c) = pair();
            let (_pd, d) = pair();
            let second = FixedPair::register(&c, &d).expect("a second pair");
            assert_eq!(second.socks().0.slot, 2);
            assert!(FixedPair::register(&c, &d).is_none(), "the table is full");
            // The first pair's slots come back once the kernel removed them,
            // and not before: its removal is still unsubmitted here.
            drop(first);
            assert!(FixedPair::register(&c, &d).is_none(), "removal in flight");
            let again = loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if let Some(again) = FixedPair::register(&c, &d) {
                    break again;
                }
            };
            assert_eq!(again.socks().0.slot, 0);
            // The table no longer holds `a`: closing it closes the socket.
            drop(a);
            pa.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert_eq!(std::io::Read::read(&mut pa, &mut got).unwrap(), 0, "EOF");
            drop((again, second));
            release_file_table();
        });
    }
}
