//! ringlb: a per-core io_uring TCP load balancer.
//!
//! # Layout
//! How a byte travels, module by module:
//! - [`cli`]: the command line, every flag documented.
//! - [`config`]: command line -> validated [`config::Config`]; addresses resolved.
//! - [`server`]: binds listeners, starts workers, turns signals into a drain.
//! - [`net`]: start-up socket work: SO_REUSEPORT listeners, the fd limit.
//! - [`worker`]: one thread + one ring per core: accept, connect, relay, drain.
//! - [`upstream`]: choosing a backend and connecting to it, with failover.
//! - [`relay`]: the two owned-buffer pumps, half-close and teardown.
//! - [`shutdown`]: the stop phase, published to every worker.
//! - [`logging`]: log set-up and the warning throttle.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod logging;
pub mod net;
pub mod relay;
pub mod server;
pub mod shutdown;
pub mod upstream;
pub mod worker;
