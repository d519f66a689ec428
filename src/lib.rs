//! ringlb: a per-core io_uring TCP and UDP load balancer.
//!
//! # Layout
//! How a byte travels, module by module, top down: every import points down
//! this list (`scripts/check-imports.sh` checks it).
//! - [`server`]: the process: starts workers, turns signals into a drain (SIGTERM) or a reload (SIGHUP), writes the ready file.
//! - [`upgrade`]: hot binary upgrade: the control socket, and the takeover of its listeners (SCM_RIGHTS).
//! - [`admin`]: the admin HTTP endpoint (hyper, bounded): /metrics, /healthz, /backends, the stats page,
//!   PATCH of a backend's state and weight, the bearer token.
//! - [`stats`]: the stats page (one self-contained HTML file) and its JSON snapshot; rates are the reader's.
//! - [`worker`]: one thread + one ring per core running the services; reloads, memory trimming, the drain.
//! - [`tcp`]: the TCP service: accept loops, one connection from accept to close ([`tcp::conn`]: PROXY
//!   header, ClientHello and SNI route, backend, relay, timeouts, access log, the registry of open
//!   connections), the relay pumps, copying or splicing ([`tcp::relay`]), their buffers
//!   ([`tcp::buffer`]) and the worker's pipes for splicing (`tcp::pipes`).
//! - [`udp`]: the UDP service: receive loops per frontend socket, one session per client address with a
//!   socket connected to its backend ([`udp::session`]: open, relay both ways, timeouts, access log).
//! - [`service`]: the seam between a worker and a transport: what every service (TCP, UDP) does for it.
//! - [`frontend`]: one config generation: per frontend its listeners, pools (its own and one per
//!   SNI route), counters, limit; the one publisher of generations, for reloads and DNS changes.
//! - [`access`]: the source rules (allow, deny, accept-proxy-from) a client is checked against at accept; pure.
//! - [`ceiling`]: the process-wide connection ceiling from the fd limit; workers accept under it.
//! - [`sources`]: per-source limits: the bounded table, shared by workers, of each source's open connections and token bucket.
//! - [`metrics`]: the exposition: every metric's name, type, help and source in one table, rendered at scrape.
//! - [`backend`]: the backend side: pools (cross-worker state as atomics) and eligibility, health
//!   (pure) and its prober, the checks that speak a protocol (redis, mysql, postgres, http, steps)
//!   and the agent check, the balancing algorithms, upstream (pick, connect with failover, the
//!   max-conns queue, the report of each backend's successes and failures), DNS discovery.
//! - [`counters`]: the per-worker counters the data path writes, summed at scrape.
//! - [`protocol`]: the pure wire parsers, fuzzed: PROXY protocol v1/v2, the TLS ClientHello.
//! - [`net`]: start-up socket work: SO_REUSEPORT listeners (`[::]` dual-stack), the fd limit.
//! - [`shutdown`]: the stop phase, published to every worker.
//! - [`logging`]: log set-up and the warning throttle.
//! - [`uring`]: every raw io_uring operation and every `unsafe` block, a file per family: each worker's runtime and ring
//!   sizes, connect (and getsockname), the registered file table, one-shot recv/send and cancel, the provided-buffer ring (receive bundles into it; replaced by a small one after a burst),
//!   the multishot receive, pipes and nonblocking splices with the readiness poll, datagram
//!   recvmsg/sendmsg (PKTINFO, MSG_TRUNC); (unit tests only) the copy path's levers measured (receive bundles, incremental buffers); malloc_trim and
//!   adopting received descriptors.
//! - [`config`]: file and flags -> the validated `Config`; the one table of defaults; located errors.
//! - `testing` (unit tests only): the deterministic random source the parsers' robustness tests share, and a loopback socket pair.

// An application crate: its docs are built with --document-private-items, so the
// layout map links every module, private or not.
#![allow(rustdoc::private_intra_doc_links)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod admin;
mod backend;
mod ceiling;
pub mod config;
mod counters;
mod frontend;
pub mod logging;
mod metrics;
mod net;
pub mod protocol;
pub mod server;
mod service;
mod shutdown;
mod sources;
mod stats;
mod tcp;
#[cfg(test)]
mod testing;
mod udp;
mod upgrade;
mod uring;
mod worker;
