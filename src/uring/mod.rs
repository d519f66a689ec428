//! Every raw io_uring operation and every `unsafe` block of ringlb, one file
//! per operation family; this folder alone allows `unsafe`, the rest of the
//! crate is `#![deny(unsafe_code)]`. It holds what tokio-uring's `TcpStream`
//! does not offer, and the set-up of each worker's ring. Each operation hands
//! the kernel pointers into memory it moves into the driver with the
//! operation (a buffer, a socket address, the socket itself, the provided
//! ring), so that memory outlives the operation even if its future is
//! dropped. Every `unsafe` block says why it is sound in a `SAFETY:` comment.
//!
//! - [`runtime`]: each worker's runtime ([`build_runtime`]), and the sizes of
//!   its ring, provided-buffer ring and registered file table.
//! - [`connect`](mod@connect): a connect a timeout can cut off ([`connect()`]), and the
//!   socket's local address ([`local_addr`]).
//! - [`files`]: the registered file table: a relayed pair's sockets named by slot ([`FixedPair`], [`Sock`]).
//! - [`recv_send`]: the one-shot receive and send ([`Recv`], [`SendAll`]), and
//!   the cancellation of every operation on a socket ([`cancel_all_on`]).
//! - [`ring`]: the provided-buffer ring, the receive bundles that fill several of
//!   its buffers in one completion (mapped as the driver reaps them), and the
//!   one-shot receive into it ([`RecvProvided`]).
//! - [`datagram`]: the UDP operations: a receive with its sender, destination
//!   and MSG_TRUNC ([`recv_msg`]), a send from a chosen source ([`send_msg`]),
//!   and a wait for readability that holds no buffer ([`poll_readable`]).
//! - [`stream`]: the multishot receive into the provided ring ([`RecvStream`]).
//! - [`splice`](mod@splice): zero-copy forwarding: a [`Pipe`] between two sockets, the
//!   nonblocking splices in and out of it, and the readiness poll ([`poll_ready`]).
//! - `bundle` (unit tests only): the copy path's levers measured against the
//!   relay's: receive bundles sent with one `sendmsg`, and incrementally
//!   consumed ring buffers (docs/performance.md).
//! - [`send_zc`](mod@send_zc): the zero-copy send ([`SendZc`]), whose buffer
//!   stays in the driver until the kernel's notification.
//! - [`sys`]: the `unsafe` libc calls that are no io_uring operation:
//!   [`trim_heap`], [`recv_with_fds`] and [`effective_uid`].

#![allow(unsafe_code)]

#[cfg(test)]
mod bundle;
mod connect;
mod datagram;
mod files;
mod recv_send;
mod ring;
mod runtime;
mod send_zc;
mod splice;
mod stream;
mod sys;

pub(crate) use connect::{connect, local_addr};
pub(crate) use datagram::{poll_readable, recv_msg, send_msg, Arrival, Datagram};
pub(crate) use files::{register_file_table, release_file_table, FixedPair, Sock};
pub(crate) use recv_send::{cancel_all_on, recv, send_all, Recv, SendAll};
pub(crate) use ring::{
    provide_buffers, recv_provided, release_buffers, shrink_buffers, Provided, Received,
    RecvProvided, BUNDLE_MAX,
};
pub(crate) use runtime::{
    build_runtime, FIRST_PROVIDED_BUFFERS, FIXED_FILES, PROVIDED_BUFFERS, PROVIDED_BUFFER_SIZE,
};
pub(crate) use send_zc::{send_zc, SendZc, ZcOwner, ZcSink, SEND_ZC_MIN};
pub(crate) use splice::{
    poll_ready, set_nonblocking, splice_in, splice_out, Pipe, PollReady, READABLE, WRITABLE,
};
pub(crate) use stream::{recv_stream, RecvStream};
pub(crate) use sys::{effective_uid, recv_with_fds, trim_heap};
