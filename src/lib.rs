//! ringlb: a per-core io_uring TCP load balancer.
//!
//! # Layout
//! How a byte travels, module by module:
//! - [`config`]: the validated settings, the one table of defaults, validation with located errors.
//! - [`config::cli`]: the command line, every flag documented -> `Config`.
//! - [`config::manual`]: shell completions and the man page, generated from the command line.
//! - [`config::file`]: TOML config file -> the same `Config`; errors name file, line and key.
//! - [`server`]: starts workers, turns signals into a drain (SIGTERM) or a reload (SIGHUP), writes the ready file.
//! - [`upgrade`]: hot binary upgrade: the control socket, and the takeover of its listeners (SCM_RIGHTS).
//! - [`frontend`]: one config generation: per frontend its listeners, pools (its own and one per
//!   SNI route), counters, limit;
//!   the watch that publishes generations.
//! - [`net`]: start-up socket work: SO_REUSEPORT listeners (`[::]` dual-stack), the fd limit.
//! - [`worker`]: one thread + one ring per core: accept loops, reloads, the timeout sweep, drain.
//! - [`access`]: the source rules (allow, deny, accept-proxy-from) a client is checked against at accept; pure.
//! - [`conn`]: one connection from accept to close: PROXY header, ClientHello and SNI route,
//!   backend, relay, timeouts, access log; its per-worker frontend state (an upstream per pool),
//!   the pure route choice, and the worker's registry of open connections (and their timers).
//! - [`ceiling`]: the process-wide connection ceiling from the fd limit; workers accept under it.
//! - [`backend`]: the backend side: pools (cross-worker state as atomics) and eligibility, health
//!   (pure) and its prober, the balancing algorithms, upstream (pick, connect with failover, the
//!   max-conns queue, the report of each backend's successes and failures), DNS discovery.
//! - [`protocol`]: the pure wire parsers, fuzzed: PROXY protocol v1/v2, the TLS ClientHello.
//! - [`relay`]: the two owned-buffer pumps (hand-written state machines), half-close and teardown.
//! - [`buffer`]: relay buffers, small while idle, large (pooled per worker) under load.
//! - [`uring`]: every raw io_uring operation and every `unsafe` block: connect, recv (one-shot and multishot), send,
//!   cancel, getsockname, the provided-buffer ring, the registered file table, malloc_trim, adopting received descriptors.
//! - [`shutdown`]: the stop phase, published to every worker.
//! - [`logging`]: log set-up and the warning throttle.
//! - [`metrics`]: per-worker counters, summed at scrape; every metric's name, type and help.
//! - `testing` (unit tests only): the deterministic random source the parsers' robustness tests share, and a loopback socket pair.
//! - [`admin`]: the admin HTTP endpoint (hyper, bounded): /metrics, /healthz, /backends, the stats page,
//!   PATCH of a backend's state and weight, the bearer token.
//! - [`stats`]: the stats page (one self-contained HTML file) and its JSON snapshot; rates are the reader's.

// An application crate: its docs are built with --document-private-items, so the
// layout map links every module, private or not.
#![allow(rustdoc::private_intra_doc_links)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod access;
mod admin;
mod backend;
mod buffer;
mod ceiling;
pub mod config;
mod conn;
mod frontend;
pub mod logging;
mod metrics;
mod net;
pub mod protocol;
mod relay;
pub mod server;
mod shutdown;
mod stats;
#[cfg(test)]
mod testing;
mod upgrade;
mod uring;
mod worker;
