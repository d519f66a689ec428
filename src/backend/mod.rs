//! The backend side: which backends a frontend has, whether each can take a
//! client, which one gets it, and the connect. Addresses come from the config
//! or from DNS ([`discovery`], which only produces address sets; the
//! frontend's publisher turns them into a generation). Each generation's
//! [`pool::Pool`] holds the backends' cross-worker state as atomics; the
//! [`probe`] thread feeds active checks into the pure [`health`] state
//! machine, real traffic feeds its failures and successes in through the
//! worker's [`upstream::Upstream`], and [`balance`] picks among the backends
//! the pool calls eligible.
//!
//! - [`pool`]: the backends' shared state (active counts, health, runtime state, weights) and eligibility.
//! - [`health`]: the pure rise/fall health state machine.
//! - [`probe`]: the one prober thread per pool slot (it follows the slot across generations) that runs health checks
//!   and agent checks.
//! - [`check`]: what a health check says and expects once connected (presets, send/expect steps), bounded in bytes.
//! - [`agent`]: the agent check's answer (HAProxy's words) and the asking.
//! - [`balance`]: the balancing algorithms, one file each, pure.
//! - [`upstream`]: one worker's way to a pool: pick, connect with failover, the max-conns queue, and
//!   the report of each backend's successes and failures on real traffic.
//! - [`discovery`]: backend names (A/AAAA, SRV) resolved and followed on a thread of its own.

pub mod agent;
pub mod balance;
pub mod check;
pub mod discovery;
pub mod health;
pub mod pool;
pub mod probe;
pub mod upstream;
