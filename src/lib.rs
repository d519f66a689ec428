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
//! - [`upstream`]: choosing a backend and connecting to it, with failover and the max-conns queue;
//!   skips drained, maint and weight-0 backends, rebuilds its balancer when weights change or ramp.
//! - [`balance`]: the balancing algorithms, one file each, pure.
//! - [`pool`]: the backends' cross-worker state (active counts, health, failure streaks, runtime
//!   state ready/drain/maint and weight, the slow-start ramp) as atomics.
//! - [`health`]: the pure rise/fall health state machine.
//! - [`probe`]: the one prober thread per pool that runs health checks (none in maint) and publishes them.
//! - [`discovery`]: backends written as names (A/AAAA, SRV): resolved at start, then
//!   re-resolved on a thread of its own, publishing a new generation when addresses change.
//! - [`proxy_protocol`]: PROXY protocol v1/v2 headers, parsed and written; pure.
//! - [`sni`]: the TLS ClientHello read for routing: server name and ALPN; pure.
//! - [`relay`]: the two owned-buffer pumps (hand-written state machines), half-close and teardown.
//! - [`buffer`]: relay buffers, small while idle, large (pooled per worker) under load.
//! - [`uring`]: every raw io_uring operation and every `unsafe` block, a file per family: each worker's runtime and ring
//!   sizes, connect (and getsockname), the registered file table, one-shot recv/send and cancel, the provided-buffer ring,
//!   the multishot receive; malloc_trim and adopting received descriptors.
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
mod balance;
mod buffer;
mod ceiling;
pub mod config;
mod conn;
mod discovery;
mod frontend;
mod health;
pub mod logging;
mod metrics;
mod net;
mod pool;
mod probe;
pub mod proxy_protocol;
mod relay;
pub mod server;
mod shutdown;
pub mod sni;
mod stats;
#[cfg(test)]
mod testing;
mod upgrade;
mod upstream;
mod uring;
mod worker;
