//! Active health checks: one prober thread per pool (shared by all workers,
//! not one per worker) that connects to each backend every interval, feeds the
//! results into each backend's [`HealthState`], and publishes flips to the
//! [`Pool`] that workers read without locks. Failures on real traffic take a
//! backend down in the pool itself; the prober then needs `rise` passed
//! checks to bring it back. A backend in `maint` is not checked at all; its
//! health stays as it was until it leaves maint. It holds the pool weakly and ends once a reload has replaced
//! the pool and its last connection is gone.

use std::io;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use tracing::{info, warn};

use crate::backend::health::HealthState;
use crate::backend::pool::Pool;
use crate::config::HealthConfig;

/// Starts the prober thread for `pool`; it runs as long as the pool lives.
pub fn spawn(
    pool: Weak<Pool>,
    frontend: String,
    config: HealthConfig,
) -> io::Result<thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::Builder::new()
        .name("ringlb-health".into())
        .spawn(move || rt.block_on(run(pool, frontend, config)))
}

async fn run(weak: Weak<Pool>, frontend: String, config: HealthConfig) {
    // Each backend starts as the pool has it: up, or as a reload carried it over.
    let Some(mut states) = weak.upgrade().map(|pool| {
        (0..pool.len())
            .map(|i| HealthState::starting(pool.is_up(i), config.rise, config.fall))
            .collect::<Vec<_>>()
    }) else {
        return;
    };
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all_down = false;
    loop {
        ticker.tick().await;
        let Some(pool) = weak.upgrade() else {
            return;
        };
        // Concurrent, so one silent backend does not delay the others' checks.
        let checks: Vec<_> = (0..pool.len())
            .map(|i| {
                pool.checked(i)
                    .then(|| tokio::spawn(check(pool.clone(), i, config.timeout)))
            })
            .collect();
        for (i, handle) in checks.into_iter().enumerate() {
            let Some(handle) = handle else {
                continue;
            };
            let result = handle
                .await
                .unwrap_or_else(|err| Err(format!("check task failed: {err}")));
            let state = &mut states[i];
            // A worker may have taken it down on failures it saw: it then
            // needs `rise` passed checks like any down backend.
            if state.is_up() && !pool.is_up(i) {
                *state = HealthState::starting(false, config.rise, config.fall);
            }
            if let Err(err) = &result {
                pool.set_last_error(i, format!("check: {err}"));
            }
            if let Some(up) = state.observe(result.is_ok()) {
                pool.set_up(i, up);
                let addr = pool.addr(i);
                match &result {
                    Ok(()) => {
                        info!(backend = %addr, "backend {addr} up after {} passed checks", config.rise)
                    }
                    Err(err) => {
                        warn!(backend = %addr, "backend {addr} down after {} failed checks: {err}", config.fall)
                    }
                }
            }
        }
        let none_up = !pool.any_up();
        if none_up != all_down {
            all_down = none_up;
            if none_up {
                warn!(%frontend, "every backend is down: new clients are closed until one recovers");
            } else {
                info!(%frontend, "a backend is up again: serving clients");
            }
        }
    }
}

/// One TCP connect to backend `i` within `timeout`.
async fn check(pool: Arc<Pool>, i: usize, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(pool.addr(i))).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
