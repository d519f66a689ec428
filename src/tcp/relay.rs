//! The two pumps that carry a connection's bytes: client -> backend and
//! backend -> client, both driven by one task.
//!
//! A pump either copies (below) or splices: socket -> kernel pipe -> socket,
//! with nonblocking splice(2) calls on the worker's thread that an io_uring
//! poll wakes when a socket turns readable or writable, so the bytes never
//! enter user space. With `splice = "auto"` a direction starts to splice
//! once it is bulk (a read filled the large buffer) and goes back to copying
//! after a small burst; with `"always"` it splices from its first byte. It
//! switches only when nothing is pending on the side it leaves (the buffer
//! sent, the multishot receive ended, the pipe empty), so copied and spliced
//! bytes never overtake each other. A splicing direction holds a pipe of the
//! worker's pool ([`pipes`]) only while bytes flow, and copies when none can
//! be had. The pipe bounds what it holds, as one send in flight bounds a
//! copying pump.
//!
//! Each pump reads into an owned buffer and writes that same buffer out, so
//! there is no copy in user space and one send per direction is in flight
//! (the backpressure bound: a slow reader stalls the writer's pump, never
//! grows memory). In request-response traffic a pump's receive is a
//! multishot one, armed once and completing at every arrival into buffers
//! of the worker's provided ring (a bundle: what waited, in one completion,
//! sent on with one `sendmsg`); while a send waits, it may complete at most
//! [`STREAM_BACKLOG`] times before the pump stops it, and a completion of
//! 16 KiB or more (bulk) stops it at once. Both sockets
//! are named to the kernel by their slots in the worker's registered file
//! table. EOF on one side becomes `shutdown(Write)` on the other
//! while the opposite pump keeps going (half-close). An error on either side
//! shuts both sockets down, which completes the other pump's pending
//! operations in the kernel: in tokio-uring a dropped operation is not
//! cancelled, so we never tear down by dropping futures.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use tokio_uring::net::TcpStream;

use crate::config::SpliceMode;
use crate::tcp::buffer::{self, BufPool};
use crate::tcp::pipes::{self, PIPE_SIZE};
use crate::uring::{self, FixedPair, Provided, Received, RecvStream, Sock};

/// Which peer of the proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The peer that connected to us.
    Client,
    /// The peer we connected to.
    Backend,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// A failed read or write, naming the side it failed on.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from `side` failed.
    #[error("{side} read failed: {source}")]
    Read {
        /// Where.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
    /// Writing to `side` failed.
    #[error("{side} write failed: {source}")]
    Write {
        /// Where.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
}

/// How a relayed connection ended.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes carried from client to backend.
    pub to_backend: u64,
    /// Bytes carried from backend to client.
    pub to_client: u64,
    /// Of those, in both directions, the bytes spliced (never copied).
    pub spliced: u64,
    /// Zero-copy sends made, both directions.
    pub zc_sends: u64,
    /// The first side to send EOF, when both directions ended cleanly.
    pub first_eof: Option<Side>,
    /// The first error, if any; its pump tore the connection down.
    pub error: Option<RelayError>,
}

impl RelayError {
    /// The side whose socket failed.
    pub fn side(&self) -> Side {
        match self {
            RelayError::Read { side, .. } | RelayError::Write { side, .. } => *side,
        }
    }
}

/// Relays between `client` and `backend` until both directions have ended or
/// one fails. Leaves both sockets open; the caller drops them.
/// When `activity` is given, every read that brings bytes stamps it with the
/// time, for the idle timeout. `splice` says when a direction splices;
/// with `send_zc`, large sends from a pump's own buffer are zero-copy, and
/// it hears of those the kernel copied after all and gets back the buffers
/// the kernel held past their send.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    pool: &BufPool,
    activity: Option<&Cell<Instant>>,
    splice: SpliceMode,
    send_zc: Option<&uring::ZcSink>,
) -> Outcome {
    let shared = Shared {
        pool,
        first_eof: Cell::new(None),
        activity,
        splice,
        nonblocking: Cell::new(false),
        spliced: Cell::new(0),
        send_zc,
        zc_sends: Cell::new(0),
    };
    // Registered with the ring for the relay's operations, when the worker
    // has a slot for them; unregistered when this ends, after the last one.
    let fixed = FixedPair::register(client, backend);
    let (c, b) = match &fixed {
        Some(fixed) => fixed.socks(),
        None => (client.into(), backend.into()),
    };
    let mut up = Pump::new(c, b, Side::Client, splice);
    let mut down = Pump::new(b, c, Side::Backend, splice);
    std::future::poll_fn(|cx| {
        // Both are polled on every wake-up, as `join!` would: a pump whose
        // operation has not completed only looks at its slot in the driver.
        let up_done = up.poll(cx, &shared).is_ready();
        let down_done = down.poll(cx, &shared).is_ready();
        if up_done && down_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    let (to_backend, up_err) = up.result();
    let (to_client, down_err) = down.result();
    Outcome {
        to_backend,
        to_client,
        spliced: shared.spliced.get(),
        zc_sends: shared.zc_sends.get(),
        first_eof: shared.first_eof.get(),
        error: up_err.or(down_err),
    }
}

/// Completions a multishot receive may hold (each in ring buffers) while
/// its pump's send waits, before it is stopped: the per-socket bound on the
/// shared ring.
const STREAM_BACKLOG: usize = 4;

/// A splicing direction whose burst (the bytes from one wait for readiness
/// to the next) stays below this goes back to copying with
/// `splice = "auto"`: its traffic is small messages again.
const BULK_BURST: u32 = 16 * 1024;

/// Splices a pump makes in a row before it lets the worker's other tasks
/// run: with fast peers a splice never has to wait.
const SPLICE_ROUNDS: u32 = 16;

/// What both pumps of a connection use.
struct Shared<'a> {
    /// The worker's relay buffers.
    pool: &'a BufPool,
    /// The first side to send EOF.
    first_eof: Cell<Option<Side>>,
    /// Stamped on every read that brings bytes, for the idle timeout.
    activity: Option<&'a Cell<Instant>>,
    /// When a direction splices.
    splice: SpliceMode,
    /// Whether both sockets were made nonblocking, as splices need.
    nonblocking: Cell<bool>,
    /// Bytes spliced, both directions.
    spliced: Cell<u64>,
    /// Whether large sends are zero-copy, and whom they report to.
    send_zc: Option<&'a uring::ZcSink>,
    /// Zero-copy sends made, both directions.
    zc_sends: Cell<u64>,
}

/// Copies `src` to `dst` until EOF, then half-closes `dst`; on an error it
/// tears both sockets down. A state machine written by hand rather than an
/// `async fn`: it is most of the memory an idle connection holds (two per
/// connection), and this way it holds only its operation in flight and a
/// few words, a third of what the same loop as an `async fn` kept.
struct Pump<'a> {
    /// Where bytes come from.
    src: Sock<'a>,
    /// Where they go.
    dst: Sock<'a>,
    /// The side `src` is.
    from: Side,
    /// Whether the next read should wait for readiness before trying: yes
    /// when the last read drained the socket (it came back short of the
    /// buffer), as every read does in request-response traffic, where the
    /// peer says nothing until its answer comes. A backend rarely speaks
    /// before the client's first bytes; the client usually has, by the time
    /// we get here.
    poll_first: bool,
    /// Whether a read that waits should be a multishot receive: yes once a
    /// read into ring buffers came back short of them (small messages, as in
    /// request-response traffic); no after a full read, since a stream
    /// armed into bulk data would hand it out in ring-buffer-sized pieces
    /// until stopped.
    stream_ok: bool,
    /// Whether the traffic is bulk: a read into the pump's own buffer filled
    /// the large buffer, and none since brought less than a bundle's worth.
    /// Then a read that waits takes one ring buffer, not a bundle, which
    /// would bring the next burst's first few hundred KiB through the ring
    /// (dearer per byte than the own buffer or a splice).
    bulk: bool,
    /// Whether `stream` was asked to stop (once is enough).
    stream_stopping: bool,
    /// Bytes carried.
    total: u64,
    /// The pump's own buffer, when it has one between operations: none while
    /// it waits on the provided ring.
    own: Option<Vec<u8>>,
    /// The multishot receive on `src`, while armed: no other receive on
    /// `src` starts until its last completion came out, or bytes could be
    /// read out of order.
    stream: Option<RecvStream>,
    /// Whether the next read is a splice.
    splicing: bool,
    /// Bytes in `pipe`, spliced in from `src` and not yet out to `dst`.
    in_pipe: u32,
    /// Bytes spliced in since the last wait for readiness on `src`.
    burst: u32,
    /// The pipe, while the direction splices and bytes flow; given back
    /// (empty) when it goes quiet.
    pipe: Option<pipes::Lease>,
    /// The operation in flight.
    step: Step<'a>,
}

/// Where a [`Pump`] is.
enum Step<'a> {
    /// About to start a read.
    Read,
    /// Waiting for the next completion of the multishot receive.
    Stream,
    /// A read into a buffer the worker's provided ring gives at completion.
    RecvProvided(uring::RecvProvided),
    /// A read into the pump's own buffer.
    Recv(uring::Recv<'a>),
    /// Sending what a read brought in a provided buffer.
    SendProvided(uring::SendAll<'a, Provided>),
    /// Sending what a read brought in the pump's own buffer.
    Send(uring::SendAll<'a, Vec<u8>>),
    /// The same, zero-copy (`send-zc`, a large send): boxed, as it holds
    /// more than the other steps, which every idle connection pays for.
    SendZc(Box<uring::SendZc<'a>>),
    /// Splicing: `src` into the pipe, the pipe into `dst`, until one waits.
    Splice,
    /// Splicing, waiting for `src` to turn readable (holding no pipe).
    SpliceIn(uring::PollReady),
    /// Splicing, waiting for `dst` to turn writable (the pipe holds bytes).
    SpliceOut(uring::PollReady),
    /// Ended, with the error that ended it, if any (taken by `result`).
    Done(Option<RelayError>),
}

impl<'a> Pump<'a> {
    fn new(src: Sock<'a>, dst: Sock<'a>, from: Side, splice: SpliceMode) -> Self {
        Pump {
            src,
            dst,
            from,
            poll_first: from == Side::Backend,
            stream_ok: false,
            bulk: false,
            stream_stopping: false,
            total: 0,
            own: None,
            stream: None,
            splicing: splice == SpliceMode::Always,
            in_pipe: 0,
            burst: 0,
            pipe: None,
            step: Step::Read,
        }
    }

    /// The side `dst` is.
    fn to(&self) -> Side {
        match self.from {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// Runs the pump until its operation in flight is not done yet (pending)
    /// or it has ended (ready).
    fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared<'_>) -> Poll<()> {
        let pool = shared.pool;
        loop {
            match &mut self.step {
                // Nothing is pending on the copy path here: the last buffer
                // was sent and no multishot receive is armed.
                Step::Read if self.splicing && self.stream.is_none() => {
                    if let Some(b) = self.own.take() {
                        pool.put(b);
                    }
                    self.step = if self.poll_first {
                        Step::SpliceIn(uring::poll_ready(self.src, uring::READABLE))
                    } else {
                        Step::Splice
                    };
                }
                Step::Splice => {
                    if self.pipe.is_none() {
                        match shared.pipe(self.src, self.dst) {
                            Some(lease) => self.pipe = Some(lease),
                            // No pipe to be had: this read copies.
                            None => {
                                self.splicing = false;
                                self.poll_first = false;
                                self.step = Step::Read;
                                continue;
                            }
                        }
                    }
                    match self.splice(shared) {
                        Poll::Ready(Some(step)) => self.step = step,
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
                Step::SpliceIn(op) => {
                    if let Err(source) = ready!(Pin::new(op).poll(cx)) {
                        let from = self.from;
                        return self.end(Some(RelayError::Read { side: from, source }), shared);
                    }
                    self.poll_first = false;
                    self.step = Step::Splice;
                }
                Step::SpliceOut(op) => {
                    if let Err(source) = ready!(Pin::new(op).poll(cx)) {
                        let to = self.to();
                        return self.end(Some(RelayError::Write { side: to, source }), shared);
                    }
                    self.step = Step::Splice;
                }
                Step::Read if self.poll_first => {
                    // A read that will most likely wait takes its buffer from
                    // the worker's provided ring when data arrives, so a
                    // connection waiting on an idle peer holds no buffer of
                    // its own; the bytes are sent from that same buffer, which
                    // goes back to the ring once sent. Where the messages are
                    // small, the receive stays armed for the next arrival
                    // (multishot), if the kernel can.
                    if let Some(b) = self.own.take() {
                        pool.put(b);
                    }
                    if self.stream_ok {
                        self.stream = uring::recv_stream(self.src);
                        self.stream_stopping = false;
                    }
                    self.step = if self.stream.is_some() {
                        Step::Stream
                    } else {
                        Step::RecvProvided(uring::recv_provided(self.src, true, !self.bulk))
                    };
                }
                Step::Stream => {
                    let Some(stream) = &mut self.stream else {
                        self.step = Step::Read;
                        continue;
                    };
                    let next = ready!(stream.poll_next(cx));
                    if stream.is_done() {
                        self.stream = None;
                    }
                    match next {
                        Some(Ok(Received::Bytes(received))) => {
                            shared.stamp();
                            // Bulk arriving: stop the stream now rather than
                            // after the send, so it takes no more of the
                            // shared ring (a bundle holds what was waiting).
                            if received.filled() {
                                self.stop_stream();
                            }
                            self.step = Step::SendProvided(uring::send_all(self.dst, received));
                        }
                        Some(Ok(Received::Eof)) if self.stream.is_none() => {
                            return self.end(None, shared)
                        }
                        // The kernel's error ends the stream; one that is
                        // not the last (the ring lost a bundle's buffers,
                        // never expected) must end the connection too, or
                        // bytes would be missing.
                        Some(Err(source)) => {
                            let from = self.from;
                            return self.end(Some(RelayError::Read { side: from, source }), shared);
                        }
                        // Every buffer of the ring is out, and bytes are
                        // waiting: once the stream has ended, a buffer of our
                        // own, read at once.
                        Some(Ok(Received::RingEmpty)) => {
                            self.poll_first = false;
                            self.stop_stream();
                        }
                        // Ended without news, or a last completion the
                        // kernel did not mark as last (not expected): stop
                        // it, and read again once it has ended.
                        None | Some(Ok(Received::Eof | Received::Cancelled)) => self.stop_stream(),
                    }
                    if self.stream.is_none() && matches!(self.step, Step::Stream) {
                        self.step = Step::Read;
                    }
                }
                Step::Read => {
                    let buf = self.own.take().unwrap_or_else(|| pool.small());
                    self.step = Step::Recv(uring::recv(self.src, buf, self.poll_first));
                }
                Step::RecvProvided(op) => match ready!(Pin::new(op).poll(cx)) {
                    Some(Ok(Received::Eof)) => return self.end(None, shared),
                    Some(Ok(Received::Bytes(received))) => {
                        shared.stamp();
                        self.step = Step::SendProvided(uring::send_all(self.dst, received));
                    }
                    // Every buffer of the ring is out, and bytes are waiting:
                    // a buffer of our own, read at once.
                    Some(Ok(Received::RingEmpty)) => {
                        self.poll_first = false;
                        self.step = Step::Read;
                    }
                    // Its ring was replaced: wait again, on the new one.
                    Some(Ok(Received::Cancelled)) => self.step = Step::Read,
                    Some(Err(source)) => {
                        let from = self.from;
                        return self.end(Some(RelayError::Read { side: from, source }), shared);
                    }
                    // No ring on this worker: a buffer of our own.
                    None => {
                        let buf = pool.small();
                        self.step = Step::Recv(uring::recv(self.src, buf, self.poll_first));
                    }
                },
                Step::SendProvided(op) => {
                    // Backpressure: while this send waits on a slow reader,
                    // a multishot receive keeps filling ring buffers; past a
                    // few, it is stopped, and armed again once what it
                    // brought has been sent.
                    if let Some(stream) = &mut self.stream {
                        if !self.stream_stopping
                            && stream.poll_backlog(cx, STREAM_BACKLOG).is_ready()
                        {
                            self.stream_stopping = true;
                            stream.cancel();
                        }
                    }
                    let (res, sent) = ready!(Pin::new(op).poll(cx));
                    let n = sent.len();
                    let full = sent.filled();
                    drop(sent);
                    if let Err(source) = res {
                        let to = self.to();
                        return self.end(Some(RelayError::Write { side: to, source }), shared);
                    }
                    self.total += n as u64;
                    // A full buffer: more is likely waiting, so read on at
                    // once, into a large buffer of our own, once the
                    // multishot receive (stopped here) has handed out what it
                    // already brought.
                    self.poll_first = !full;
                    self.stream_ok = !full;
                    self.splicing = shared.splice == SpliceMode::Always;
                    if full && self.own.is_none() {
                        self.own = Some(pool.resize(pool.small(), buffer::SMALL));
                    }
                    self.step = if self.stream.is_some() {
                        if full {
                            self.stop_stream();
                        }
                        Step::Stream
                    } else {
                        Step::Read
                    };
                }
                Step::Recv(op) => {
                    let (res, buf) = ready!(Pin::new(op).poll(cx));
                    match res {
                        Ok(0) => {
                            self.own = Some(buf);
                            return self.end(None, shared);
                        }
                        Ok(_) => {
                            shared.stamp();
                            self.step = match shared.send_zc {
                                Some(sink) if buf.len() >= uring::SEND_ZC_MIN => {
                                    Step::SendZc(Box::new(uring::send_zc(self.dst, buf, sink)))
                                }
                                _ => Step::Send(uring::send_all(self.dst, buf)),
                            };
                        }
                        Err(source) => {
                            self.own = Some(buf);
                            let from = self.from;
                            return self.end(Some(RelayError::Read { side: from, source }), shared);
                        }
                    }
                }
                Step::Send(op) => {
                    let (res, buf) = ready!(Pin::new(op).poll(cx));
                    if let Err(source) = res {
                        self.own = Some(buf);
                        let to = self.to();
                        return self.end(Some(RelayError::Write { side: to, source }), shared);
                    }
                    let (n, cap) = (buf.len(), buf.capacity());
                    self.sent(n, cap, buf, shared);
                }
                Step::SendZc(op) => {
                    let (res, sent) = ready!(Pin::new(op).poll(cx));
                    let zc = shared.zc_sends.get() + u64::from(sent.zero_copy);
                    shared.zc_sends.set(zc);
                    if let Err(source) = res {
                        self.own = sent.buf;
                        let to = self.to();
                        return self.end(Some(RelayError::Write { side: to, source }), shared);
                    }
                    // The kernel may still hold the buffer's pages: the next
                    // read takes another.
                    let buf = sent.buf.unwrap_or_else(|| pool.large_buf());
                    self.sent(sent.len, sent.capacity, buf, shared);
                }
                Step::Done(_) => return Poll::Ready(()),
            }
        }
    }

    /// Takes the next step after `n` bytes of a buffer of `cap` bytes were
    /// sent from the pump's own buffer; `buf` is the one to read into next.
    fn sent(&mut self, n: usize, cap: usize, buf: Vec<u8>, shared: &Shared<'_>) {
        self.total += n as u64;
        self.poll_first = n < cap;
        // Bulk: a read filled the large buffer.
        let bulk = n == cap && n >= shared.pool.large();
        self.bulk = bulk || (self.bulk && n >= uring::BUNDLE_MAX);
        self.splicing = match shared.splice {
            SpliceMode::Always => true,
            SpliceMode::Auto => bulk,
            SpliceMode::Never => false,
        };
        // A ring buffer's read tells first whether the messages are small
        // enough for a stream.
        self.stream_ok = false;
        self.own = Some(shared.pool.resize(buf, n));
        self.step = Step::Read;
    }

    /// Splices until a socket has to be waited for (`Ready(Some(step))`, the
    /// wait), the pump ended (`Ready(None)`), or it made [`SPLICE_ROUNDS`]
    /// splices in a row (`Pending`: to be polled again soon).
    fn splice(&mut self, shared: &Shared<'_>) -> Poll<Option<Step<'a>>> {
        let Some(lease) = &self.pipe else {
            return Poll::Ready(Some(Step::Read));
        };
        for _ in 0..SPLICE_ROUNDS {
            if self.in_pipe > 0 {
                match uring::splice_out(lease.pipe(), self.dst, self.in_pipe as usize) {
                    Ok(n) => {
                        self.in_pipe -= n as u32;
                        self.total += n as u64;
                        shared.spliced.set(shared.spliced.get() + n as u64);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        return Poll::Ready(Some(Step::SpliceOut(uring::poll_ready(
                            self.dst,
                            uring::WRITABLE,
                        ))));
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        let to = self.to();
                        let _ = self.end(Some(RelayError::Write { side: to, source }), shared);
                        return Poll::Ready(None);
                    }
                }
                continue;
            }
            match uring::splice_in(self.src, lease.pipe(), PIPE_SIZE) {
                Ok(0) => {
                    let _ = self.end(None, shared);
                    return Poll::Ready(None);
                }
                Ok(n) => {
                    shared.stamp();
                    self.in_pipe = n as u32;
                    self.burst = self.burst.saturating_add(n as u32);
                }
                // Quiet: the pipe is empty, and goes back to the pool while
                // the direction waits.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(lease) = self.pipe.take() {
                        pipes::put(lease);
                    }
                    let burst = std::mem::take(&mut self.burst);
                    if shared.splice == SpliceMode::Auto && burst < BULK_BURST {
                        // Small messages again: copy them.
                        self.splicing = false;
                        self.poll_first = true;
                        self.stream_ok = false;
                        return Poll::Ready(Some(Step::Read));
                    }
                    return Poll::Ready(Some(Step::SpliceIn(uring::poll_ready(
                        self.src,
                        uring::READABLE,
                    ))));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let from = self.from;
                    let _ = self.end(Some(RelayError::Read { side: from, source }), shared);
                    return Poll::Ready(None);
                }
            }
        }
        Poll::Pending
    }

    /// Asks the multishot receive, if one is armed, to stop, once.
    fn stop_stream(&mut self) {
        if let Some(stream) = &self.stream {
            if !std::mem::replace(&mut self.stream_stopping, true) {
                stream.cancel();
            }
        }
    }

    /// Ends the pump: on an error both sockets are torn down; on EOF, `dst`
    /// is half-closed unless the other direction has ended too.
    fn end(&mut self, error: Option<RelayError>, shared: &Shared<'_>) -> Poll<()> {
        if let Some(buf) = self.own.take() {
            shared.pool.put(buf);
        }
        // An empty pipe goes back to the pool; one that may hold bytes is
        // closed (dropped).
        if let Some(lease) = self.pipe.take() {
            if self.in_pipe == 0 {
                pipes::put(lease);
            }
        }
        if error.is_some() {
            teardown(self.src, self.dst);
            // The shutdown ends a multishot receive still armed; the driver
            // hands the buffers it brings back to the ring.
            self.stream = None;
        } else if shared.first_eof.get().is_none() {
            shared.first_eof.set(Some(self.from));
            let _ = self.dst.shutdown(Shutdown::Write);
        }
        // Otherwise the other direction has ended too: both sockets are
        // about to be closed, and close() sends the FIN (both receive queues
        // are drained, so it is a FIN, not a reset), which saves a shutdown
        // call per connection.
        self.step = Step::Done(error);
        Poll::Ready(())
    }

    /// The bytes carried and the error that ended the pump, if any; once,
    /// after it ended.
    fn result(&mut self) -> (u64, Option<RelayError>) {
        match &mut self.step {
            Step::Done(error) => (self.total, error.take()),
            _ => (self.total, None),
        }
    }
}

impl Shared<'_> {
    /// A pipe for a direction about to splice between `src` and `dst`,
    /// which are made nonblocking first (once per connection); `None` when
    /// no pipe can be had.
    fn pipe(&self, src: Sock<'_>, dst: Sock<'_>) -> Option<pipes::Lease> {
        if !self.nonblocking.get() {
            uring::set_nonblocking(src).ok()?;
            uring::set_nonblocking(dst).ok()?;
            self.nonblocking.set(true);
        }
        pipes::take()
    }

    /// Notes that a read brought bytes.
    fn stamp(&self) {
        if let Some(activity) = self.activity {
            activity.set(Instant::now());
        }
    }
}

/// Shuts both sockets down so every pending operation on them completes.
pub fn teardown<'a>(a: impl Into<Sock<'a>>, b: impl Into<Sock<'a>>) {
    let _ = a.into().shutdown(Shutdown::Both);
    let _ = b.into().shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pump_holds_its_operation_and_a_few_words() {
        // Two pumps are most of what an idle connection's task holds; the
        // same loop as an `async fn` took 368 bytes. A pump growing back past
        // this bound should be a decision, not an accident.
        let size = std::mem::size_of::<Pump<'static>>();
        assert!(size <= 160, "a pump takes {size} bytes");
    }

    #[test]
    fn a_stalled_reader_holds_a_few_ring_buffers_not_the_ring() {
        use std::io::Write;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::time::Duration;

        tokio_uring::start(async {
            uring::provide_buffers(16, 16, 2048).unwrap();
            // Small socket buffers, and a client who reads nothing: the
            // relay's send to it stalls soon, and so does the backend.
            let (client_peer, client) = crate::testing::pair_with_buffers(Some(4096));
            let (mut backend_peer, backend) = crate::testing::pair_with_buffers(Some(4096));
            // The backend talks in small writes, each its own arrival, each
            // taking a ring buffer of its own unless the relay bounds them.
            let written = Arc::new(AtomicUsize::new(0));
            let writer = {
                let written = written.clone();
                std::thread::spawn(move || {
                    while backend_peer.write_all(&[7; 100]).is_ok() {
                        written.fetch_add(100, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            };
            let pool = BufPool::new(64 * 1024);
            let check = async {
                // Stalled: the backend's writes stop getting through.
                let mut last = usize::MAX;
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let now = written.load(Ordering::Relaxed);
                    if now == last {
                        break;
                    }
                    last = now;
                }
                // The stalled connection holds a few of the ring's 16
                // buffers: another socket's receive still finds one.
                let (mut other_peer, other) = crate::testing::pair();
                other_peer.write_all(b"x").unwrap();
                let got = uring::recv_provided(&other, false, true).await;
                assert!(
                    matches!(got, Some(Ok(Received::Bytes(_)))),
                    "the ring ran dry: {got:?}"
                );
                drop(client_peer);
            };
            let (outcome, ()) = tokio::join!(
                relay(&client, &backend, &pool, None, SpliceMode::Never, None),
                check
            );
            assert!(outcome.error.is_some(), "the client went away unread");
            drop(backend);
            writer.join().unwrap();
            uring::release_buffers();
        });
    }
}
