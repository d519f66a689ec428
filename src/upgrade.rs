//! Hot binary upgrade: the control socket a running ringlb serves
//! (`--control-socket PATH`) and the takeover a new one performs through it
//! (`--takeover PATH`). The running process hands over every listening
//! socket (each frontend's SO_REUSEPORT group, and the admin listener) with
//! SCM_RIGHTS; the new process accepts on the same sockets, so the clients
//! queued in their backlogs are never dropped, and then tells the old one to
//! drain. The old process stops accepting by cancelling its accepts, never by
//! shutting a socket down (which would reset the queue for both), answers
//! once none of its workers accepts any more, and drains as on SIGTERM.
//!
//! The conversation, over a Unix stream socket; each message is a 4-byte
//! big-endian length and a JSON object:
//! 1. new → old: [`Hello`], naming the protocol and its version;
//! 2. old → new: [`Offer`], the listeners (or an error, e.g. another version),
//!    then the descriptors themselves, in that order, in messages of one
//!    byte carrying up to [`FDS_PER_MESSAGE`] descriptors each;
//! 3. new → old, once the new process accepts: [`Command`] `drain`;
//! 4. old → new: [`Stopped`], once the old process accepts no more.
//!
//! Until step 3 the old process has changed nothing, so any failure on the
//! way (no socket, another version, a config that does not validate, a bind
//! error) leaves it serving untouched while the new one exits with one line.

use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::MAX_WORKERS;
use crate::frontend::{Generations, Handed, Listeners};
use crate::shutdown::{Accepting, Phase, Trigger};
use crate::uring;

/// The version of the conversation; both processes must speak the same.
pub const PROTOCOL_VERSION: u32 = 1;
/// What a [`Hello`] says it is.
const PROTOCOL_NAME: &str = "ringlb-takeover";
/// Descriptors per SCM_RIGHTS message (the kernel takes up to 253).
const FDS_PER_MESSAGE: usize = 64;
/// Most listening sockets a takeover accepts in all: 16 frontends of
/// [`MAX_WORKERS`] sockets each. A count declared above it (or above
/// [`MAX_WORKERS`] for one frontend) is refused before anything is sized by it.
const MAX_OFFERED_SOCKETS: usize = 16 * MAX_WORKERS as usize;
/// Largest JSON message either side accepts.
const MAX_MESSAGE: usize = 1 << 20;
/// How long either side waits for the other's next message, except below.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process waits for the new one to start accepting
/// (building its config generation, starting its workers).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a takeover or the control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Nothing to connect to, or the connection failed.
    #[error("takeover: cannot connect to the control socket {}: {source}", .path.display())]
    Connect {
        /// The --takeover path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The process serving the control socket is of another user (not root).
    #[error("takeover: refusing the control socket {}: it is served by {peer}", .path.display())]
    Untrusted {
        /// The --takeover path.
        path: PathBuf,
        /// Who serves it, and why that is not trusted.
        peer: String,
    },
    /// The running process refused (another protocol version, draining...).
    #[error("takeover: the running ringlb refused: {0}")]
    Refused(String),
    /// The conversation broke off or made no sense.
    #[error("takeover: {0}")]
    Protocol(String),
    /// The control socket could not be opened.
    #[error("cannot open the control socket {}: {reason}", .path.display())]
    Bind {
        /// The --control-socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Step 1: who is asking, in which version.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    /// Always [`PROTOCOL_NAME`].
    protocol: String,
    /// The asker's [`PROTOCOL_VERSION`].
    version: u32,
    /// The asker's process id, for the logs.
    pid: u32,
}

/// Step 2: the listeners on offer, whose descriptors follow in this order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Offer {
    /// The offering process's [`PROTOCOL_VERSION`].
    version: u32,
    /// The offering process's id.
    pid: u32,
    /// Set when the offer is refused; nothing else then.
    error: Option<String>,
    /// Each frontend's listener.
    frontends: Vec<OfferedListener>,
    /// The admin endpoint's listener, last.
    admin: Option<OfferedAdmin>,
}

/// One frontend's listener on offer.
#[derive(Debug, Serialize, Deserialize)]
struct OfferedListener {
    /// The frontend's name.
    name: String,
    /// Its configured listen address.
    listen: SocketAddr,
    /// The address bound.
    addr: SocketAddr,
    /// How many sockets (one per worker) its group has.
    sockets: usize,
}

/// The admin listener on offer.
#[derive(Debug, Serialize, Deserialize)]
struct OfferedAdmin {
    /// The configured --admin address.
    listen: SocketAddr,
    /// The address bound.
    addr: SocketAddr,
}

/// Step 3: what the new process asks of the old.
#[derive(Debug, Serialize, Deserialize)]
struct Command {
    /// `drain`.
    command: String,
}

/// Step 4: the old process accepts no more.
#[derive(Debug, Serialize, Deserialize)]
struct Stopped {
    /// Whether every worker stopped accepting in time.
    stopped: bool,
}

/// The admin listener of a running process, for [`serve`] to offer.
#[derive(Debug)]
pub struct AdminListener {
    /// The configured --admin address.
    pub listen: SocketAddr,
    /// The bound address.
    pub addr: SocketAddr,
    /// A handle on the listening socket.
    pub socket: TcpListener,
    /// Set to true to stop the admin endpoint's accepting.
    pub stop: watch::Sender<bool>,
}

/// A takeover under way, on the new process's side: what was received,
/// until [`Takeover::finish`] tells the old process to drain.
#[derive(Debug)]
pub struct Takeover {
    /// The connection to the old process.
    stream: UnixStream,
    /// The old process's id.
    pub pid: u32,
    /// The frontends' listeners, for the first generation to claim.
    pub handed: Vec<Handed>,
    /// The admin listener, with its configured address.
    pub admin: Option<(SocketAddr, TcpListener)>,
}

/// Connects to the control socket at `path` and receives the running
/// process's listeners. When `path` is also this process's own
/// `control_socket` and nobody serves it (no file, or a stale one), this is
/// a first start: `Ok(None)`.
pub fn take_over(
    path: &Path,
    control_socket: Option<&Path>,
) -> Result<Option<Takeover>, UpgradeError> {
    let connect_err = |source| UpgradeError::Connect {
        path: path.to_owned(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err)
            if control_socket == Some(path)
                && matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) =>
        {
            info!(control_socket = %path.display(), "no running ringlb to take over from: starting fresh");
            return Ok(None);
        }
        Err(err) => return Err(connect_err(err)),
    };
    // Nothing is said to, or taken from, a process of another user.
    if let Err(peer) = trusted_peer(&stream) {
        return Err(UpgradeError::Untrusted {
            path: path.to_owned(),
            peer,
        });
    }
    set_timeout(&stream, STEP_TIMEOUT).map_err(connect_err)?;
    let proto = |err: io::Error| UpgradeError::Protocol(err.to_string());
    // A running ringlb that refuses this one (of another user) answers
    // without reading the hello and hangs up, so the hello may break on a
    // closed socket: its answer, already queued, is the better error.
    let said = write_message(
        &mut stream,
        &Hello {
            protocol: PROTOCOL_NAME.into(),
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
    );
    let offer: Offer = match (said, read_message(&mut stream)) {
        (Ok(()), Ok(offer)) => offer,
        (Err(_), Ok(offer)) if offer.error.is_some() => offer,
        (Err(err), _) | (Ok(()), Err(err)) => return Err(proto(err)),
    };
    if let Some(error) = offer.error {
        return Err(UpgradeError::Refused(error));
    }
    if offer.version != PROTOCOL_VERSION {
        return Err(UpgradeError::Refused(format!(
            "it speaks takeover protocol version {}, this ringlb speaks {PROTOCOL_VERSION}",
            offer.version
        )));
    }
    let total = offered_sockets(&offer)?;
    let mut fds = receive_fds(&stream, total).map_err(proto)?.into_iter();
    let mut handed = Vec::with_capacity(offer.frontends.len());
    for f in offer.frontends {
        let sockets = fds
            .by_ref()
            .take(f.sockets)
            .map(|fd| listening_socket(fd, f.addr, true))
            .collect::<Result<Vec<_>, _>>()?;
        handed.push(Handed {
            name: f.name,
            listen: f.listen,
            listeners: Listeners {
                addr: f.addr,
                sockets,
            },
        });
    }
    let admin = match (offer.admin, fds.next()) {
        (Some(a), Some(fd)) => Some((a.listen, listening_socket(fd, a.addr, false)?.into())),
        _ => None,
    };
    info!(
        pid = offer.pid,
        frontends = handed.len(),
        "takeover: received the running ringlb's listeners"
    );
    Ok(Some(Takeover {
        stream,
        pid: offer.pid,
        handed,
        admin,
    }))
}

impl Takeover {
    /// Tells the old process to stop accepting and drain, and waits until it
    /// accepts no more (then every client in the shared backlogs is ours).
    pub fn finish(mut self) -> Result<u32, UpgradeError> {
        let proto = |err: io::Error| UpgradeError::Protocol(err.to_string());
        write_message(
            &mut self.stream,
            &Command {
                command: "drain".into(),
            },
        )
        .map_err(proto)?;
        let stopped: Stopped = read_message(&mut self.stream).map_err(proto)?;
        if !stopped.stopped {
            return Err(UpgradeError::Protocol(format!(
                "the old ringlb (pid {}) did not stop accepting in time",
                self.pid
            )));
        }
        Ok(self.pid)
    }
}

/// How many sockets `offer` declares, refused above what a ringlb can hold.
fn offered_sockets(offer: &Offer) -> Result<usize, UpgradeError> {
    let mut total = usize::from(offer.admin.is_some());
    for f in &offer.frontends {
        if f.sockets > MAX_WORKERS as usize {
            return Err(UpgradeError::Protocol(format!(
                "the running ringlb offers {} sockets for frontend {:?}, more than the {MAX_WORKERS} a frontend can have",
                f.sockets, f.name
            )));
        }
        total += f.sockets;
    }
    if total > MAX_OFFERED_SOCKETS {
        return Err(UpgradeError::Protocol(format!(
            "the running ringlb offers {total} listening sockets, more than the {MAX_OFFERED_SOCKETS} a takeover accepts"
        )));
    }
    Ok(total)
}

/// Whether the process at the other end of a control connection may be
/// trusted: only one running as this process's user, or as root, is. The
/// error describes the peer (uid and pid) and the rule.
fn trusted_peer(stream: &UnixStream) -> Result<(), String> {
    let ours = uring::effective_uid();
    match getsockopt(stream, sockopt::PeerCredentials) {
        Ok(peer) if peer.uid() == ours || peer.uid() == 0 => Ok(()),
        Ok(peer) => Err(format!(
            "uid {} (pid {}), and only uid {ours} (this process's) or root is trusted",
            peer.uid(),
            peer.pid()
        )),
        Err(err) => Err(format!(
            "a process whose uid is unknown (SO_PEERCRED: {err})"
        )),
    }
}

/// A received descriptor checked to be a listening TCP socket (or, with
/// `datagram`, a UDP frontend's socket) bound to `addr`.
fn listening_socket(
    fd: OwnedFd,
    addr: SocketAddr,
    datagram: bool,
) -> Result<socket2::Socket, UpgradeError> {
    let bad = |why: String| UpgradeError::Protocol(format!("the socket offered for {addr} {why}"));
    let is_datagram = matches!(
        getsockopt(&fd, sockopt::SockType),
        Ok(nix::sys::socket::SockType::Datagram)
    );
    match getsockopt(&fd, sockopt::AcceptConn) {
        _ if datagram && is_datagram => {}
        Ok(true) => {}
        Ok(false) => return Err(bad("is not listening".into())),
        Err(err) => return Err(bad(format!("is not a socket: {err}"))),
    }
    let socket = socket2::Socket::from(fd);
    let bound = socket.local_addr().ok().and_then(|a| a.as_socket());
    if bound != Some(addr) {
        return Err(bad(format!("is bound to {bound:?}")));
    }
    Ok(socket)
}

/// The control socket of a running process: a Unix listener at a path,
/// mode 0600, removed when dropped if the path is still this one's.
#[derive(Debug)]
pub struct ControlSocket {
    /// The listener.
    listener: UnixListener,
    /// Where it is.
    path: PathBuf,
    /// The file's (device, inode), to tell it from a successor's.
    id: (u64, u64),
}

impl ControlSocket {
    /// Opens the control socket at `path`. A socket file nobody serves (left
    /// by a crash) is replaced; one that a running process serves is an
    /// error, as is a path that is not a socket.
    pub fn bind(path: &Path) -> Result<ControlSocket, UpgradeError> {
        let fail = |reason: String| UpgradeError::Bind {
            path: path.to_owned(),
            reason,
        };
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(fail("it exists and is not a socket".into()));
            }
            Ok(_) => {
                if UnixStream::connect(path).is_ok() {
                    return Err(fail(format!(
                        "a running ringlb serves it (start with --takeover {} to take over from it)",
                        path.display()
                    )));
                }
            }
            Err(_) => {}
        }
        // bind(2) creates the file with the process's umask, and umask is
        // process-wide (other threads run by now). So the socket is bound in
        // a fresh directory of mode 0700 beside the path, where nobody else
        // can reach it, made 0600 there, then renamed into place: never
        // reachable with looser permissions, and a stale file is replaced in
        // one step.
        let mut dir = path.as_os_str().to_owned();
        dir.push(format!(".{}.d", std::process::id()));
        let dir = PathBuf::from(dir);
        // A leftover of a crashed process that had our pid.
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        // (The umask may have taken bits off; never more than 0700 all the same.)
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let tmp = dir.join("s");
        let placed = UnixListener::bind(&tmp).and_then(|listener| {
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
            fs::rename(&tmp, path)?;
            let meta = fs::symlink_metadata(path)?;
            Ok((listener, meta))
        });
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_dir(&dir);
        let (listener, meta) = placed.map_err(|e| fail(e.to_string()))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Removes the socket file if it is still this one's (not a successor's).
    pub fn remove(&self) {
        let ours = fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What the old process's side needs to hand over and then drain.
pub struct Serve {
    /// The control socket; the server removes it at exit.
    pub socket: Arc<ControlSocket>,
    /// The current config generation: its listeners are what is offered.
    pub generations: Generations,
    /// The phase, to refuse when already draining.
    pub phase: crate::shutdown::Watch,
    /// Moves the process to draining.
    pub trigger: Arc<Trigger>,
    /// Tells when no worker accepts any more.
    pub accepting: Arc<Accepting>,
    /// The admin endpoint's listener, if any.
    pub admin: Option<AdminListener>,
    /// Sends `STOPPING=1` to systemd and the like, once draining.
    pub on_drain: Box<dyn Fn() + Send>,
}

/// The thread serving the control socket.
pub struct Control {
    thread: thread::JoinHandle<()>,
    /// Set once a successor told this process to drain: from then on the
    /// thread finishes the conversation in bounded time.
    handing_over: Arc<AtomicBool>,
}

impl Control {
    /// Called as the process exits: if it drains because a successor took
    /// over, waits for the conversation to end, so the successor hears that
    /// this process stopped accepting (and the log says so) before it goes.
    /// Otherwise the thread still waits for a successor and is left to exit
    /// with the process.
    pub fn finish(self) {
        if self.handing_over.load(Ordering::SeqCst) {
            let _ = self.thread.join();
        }
    }
}

/// Serves the control socket on a thread of its own until a takeover
/// succeeds (then the socket file is gone and the process drains) or the
/// process exits.
pub fn serve(ctx: Serve) -> io::Result<Control> {
    let handing_over = Arc::new(AtomicBool::new(false));
    let flag = handing_over.clone();
    let thread = thread::Builder::new()
        .name("ringlb-control".into())
        .spawn(move || {
            info!(control_socket = %ctx.socket.path.display(), "control socket listening");
            for stream in ctx.socket.listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(err) => {
                        warn!(%err, "control socket: accept failed");
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                match hand_over(stream, &ctx, &flag) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(err) if flag.load(Ordering::SeqCst) => {
                        warn!(%err, "takeover: the new process serves, but did not hear that this one stopped accepting");
                        return;
                    }
                    Err(err) => {
                        warn!(%err, "takeover abandoned; still serving as before")
                    }
                }
            }
        })?;
    Ok(Control {
        thread,
        handing_over,
    })
}

/// One conversation with a would-be successor; `Ok(true)` once it took over.
fn hand_over(mut stream: UnixStream, ctx: &Serve, handing_over: &AtomicBool) -> io::Result<bool> {
    set_timeout(&stream, STEP_TIMEOUT)?;
    // A process of another user is told no, and nothing is read from it.
    if let Err(peer) = trusted_peer(&stream) {
        warn!("control socket: refused a connection from {peer}");
        let error = format!(
            "the running ringlb (pid {}) takes no takeover from {peer}",
            std::process::id()
        );
        write_message(
            &mut stream,
            &Offer {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
                error: Some(error),
                ..Offer::default()
            },
        )?;
        return Ok(false);
    }
    let hello: Hello = read_message(&mut stream)?;
    let refuse = |stream: &mut UnixStream, error: String| {
        warn!(pid = hello.pid, "takeover refused: {error}");
        write_message(
            stream,
            &Offer {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
                error: Some(error),
                ..Offer::default()
            },
        )
        .map(|()| false)
    };
    if hello.protocol != PROTOCOL_NAME || hello.version != PROTOCOL_VERSION {
        let error = format!(
            "it speaks {} version {}, the running ringlb (pid {}) speaks {PROTOCOL_NAME} version {PROTOCOL_VERSION}",
            hello.protocol,
            hello.version,
            std::process::id()
        );
        return refuse(&mut stream, error);
    }
    if *ctx.phase.borrow() != Phase::Running {
        let error = format!(
            "the running ringlb (pid {}) is already stopping",
            std::process::id()
        );
        return refuse(&mut stream, error);
    }

    let generation = ctx.generations.borrow().clone();
    let mut offer = Offer {
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
        ..Offer::default()
    };
    let mut fds: Vec<RawFd> = Vec::new();
    for fe in &generation.frontends {
        offer.frontends.push(OfferedListener {
            name: fe.config.name.clone(),
            listen: fe.config.listen,
            addr: fe.listeners.addr,
            sockets: fe.listeners.sockets.len(),
        });
        fds.extend(fe.listeners.sockets.iter().map(|s| s.as_raw_fd()));
    }
    if let Some(admin) = &ctx.admin {
        offer.admin = Some(OfferedAdmin {
            listen: admin.listen,
            addr: admin.addr,
        });
        fds.push(admin.socket.as_raw_fd());
    }
    write_message(&mut stream, &offer)?;
    send_fds(&stream, &fds)?;
    // The descriptors were duplicated into the message; ours may go.
    drop(generation);
    info!(
        pid = hello.pid,
        "takeover: listeners handed over; waiting for the new process to accept"
    );

    set_timeout(&stream, START_TIMEOUT)?;
    let command: Command = match read_message(&mut stream) {
        Ok(command) => command,
        Err(err) => {
            warn!(pid = hello.pid, %err, "takeover: the new process went away before it accepted; still serving");
            return Ok(false);
        }
    };
    if command.command != "drain" {
        warn!(pid = hello.pid, command = %command.command, "takeover: unknown command; still serving");
        return Ok(false);
    }

    // From here on the new process serves: stop accepting, let it have the
    // control socket's path, and drain. The process waits for the rest of
    // this conversation before it exits, however soon its drain ends.
    handing_over.store(true, Ordering::SeqCst);
    info!(
        pid = hello.pid,
        "hot upgrade: process {} took over; no new connections, draining open ones", hello.pid
    );
    if let Some(admin) = &ctx.admin {
        admin.stop.send_replace(true);
    }
    ctx.socket.remove();
    ctx.accepting.hand_over();
    (ctx.on_drain)();
    ctx.trigger.drain();
    let stopped = ctx.accepting.wait_none(STEP_TIMEOUT);
    if !stopped {
        warn!("takeover: some workers still accept after {STEP_TIMEOUT:?}");
    }
    set_timeout(&stream, STEP_TIMEOUT)?;
    write_message(&mut stream, &Stopped { stopped })?;
    Ok(true)
}

/// Sets both timeouts of `stream`.
fn set_timeout(stream: &UnixStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

/// Writes `msg` as a length and its JSON.
fn write_message<T: Serialize>(stream: &mut UnixStream, msg: &T) -> io::Result<()> {
    let json = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(&json)
}

/// Reads one message written by [`write_message`]; exactly its bytes, so
/// descriptors sent after it stay unread.
fn read_message<T: for<'de> Deserialize<'de>>(stream: &mut UnixStream) -> io::Result<T> {
    let mut len = [0; 4];
    stream
        .read_exact(&mut len)
        .map_err(|err| match err.kind() {
            io::ErrorKind::UnexpectedEof => {
                io::Error::new(err.kind(), "the other side closed the control connection")
            }
            _ => err,
        })?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::other(format!(
            "a message of {len} bytes is too long"
        )));
    }
    let mut json = vec![0; len];
    stream.read_exact(&mut json)?;
    serde_json::from_slice(&json)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {err}")))
}

/// Sends `fds` in messages of one byte and up to [`FDS_PER_MESSAGE`] descriptors.
fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let rights = [ControlMessage::ScmRights(chunk)];
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &rights,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != 1 {
            return Err(io::Error::other("short write of a descriptor message"));
        }
    }
    Ok(())
}

/// Receives `count` descriptors sent by [`send_fds`]. Every descriptor the
/// kernel installs is owned at once, so on any failure all of them close.
fn receive_fds(stream: &UnixStream, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(count.min(MAX_OFFERED_SOCKETS));
    while out.len() < count {
        let mut byte = [0u8; 1];
        let got = uring::recv_with_fds(stream.as_fd(), &mut byte, FDS_PER_MESSAGE)?;
        if got.truncated {
            return Err(io::Error::other(format!(
                "a descriptor message was truncated: the other side sent more than {FDS_PER_MESSAGE} \
                 descriptors in one message, or this process is out of descriptors; the {} that \
                 arrived were closed",
                got.fds.len() + out.len()
            )));
        }
        if got.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side closed the control connection before every socket arrived",
            ));
        }
        if got.fds.is_empty() {
            return Err(io::Error::other(
                "a descriptor message carried no descriptor (out of descriptors?)",
            ));
        }
        out.extend(got.fds);
    }
    if out.len() > count {
        return Err(io::Error::other(format!(
            "{} descriptors arrived for the {count} offered",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of this process's descriptors are open on the object that
    /// /proc names `link` (e.g. `socket:[1234]`): a count other tests running
    /// in parallel cannot disturb.
    fn open_on(link: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| fs::read_link(entry.path()).is_ok_and(|l| l == link))
            .count()
    }

    #[test]
    fn a_truncated_descriptor_message_fails_and_leaks_none() {
        let (old, new) = UnixStream::pair().unwrap();
        let (sent, _peer) = UnixStream::pair().unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", sent.as_raw_fd())).unwrap();
        // More descriptors in one message than the receiver has room for.
        let many = [sent.as_raw_fd(); FDS_PER_MESSAGE + 36];
        sendmsg::<()>(
            old.as_raw_fd(),
            &[IoSlice::new(b"F")],
            &[ControlMessage::ScmRights(&many)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        drop(sent);
        assert_eq!(open_on(&link), 0, "only the message holds the socket now");

        let err = receive_fds(&new, many.len()).unwrap_err().to_string();
        assert_eq!(
            open_on(&link),
            0,
            "every descriptor received is closed again ({err})"
        );
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn more_descriptors_than_offered_fail_and_leak_none() {
        let (old, new) = UnixStream::pair().unwrap();
        let (sent, _peer) = UnixStream::pair().unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", sent.as_raw_fd())).unwrap();
        send_fds(&old, &[sent.as_raw_fd(); 3]).unwrap();
        drop(sent);
        let err = receive_fds(&new, 2).unwrap_err().to_string();
        assert_eq!(open_on(&link), 0, "none kept ({err})");
        assert!(
            err.contains("3 descriptors arrived for the 2 offered"),
            "{err}"
        );
    }

    #[test]
    fn a_declared_socket_count_is_capped() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let offer = |sockets: &[usize]| Offer {
            frontends: sockets
                .iter()
                .map(|&sockets| OfferedListener {
                    name: "f".into(),
                    listen: addr,
                    addr,
                    sockets,
                })
                .collect(),
            admin: Some(OfferedAdmin { listen: addr, addr }),
            ..Offer::default()
        };
        let most = MAX_WORKERS as usize;
        assert_eq!(offered_sockets(&offer(&[2, 3])).unwrap(), 6);
        assert_eq!(offered_sockets(&offer(&[most; 15])).unwrap(), 15 * most + 1);
        let err = offered_sockets(&offer(&[most + 1]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("offers {} sockets", most + 1)),
            "{err}"
        );
        let err = offered_sockets(&offer(&[most; 16]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("offers {} listening", 16 * most + 1)),
            "{err}"
        );
        let err = offered_sockets(&offer(&[usize::MAX]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&usize::MAX.to_string()), "{err}");
    }
}
