//! The accept loop: one of several per frontend socket, each taking a slot
//! under the process's connection ceiling and the frontend's max-conns
//! before it asks the kernel for the next client, so at either limit new
//! clients wait in the kernel's backlog rather than being accepted and closed.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_uring::net::TcpListener;
use tracing::warn;

use super::conn::{self, FrontendState, Registry};
use crate::logging::Throttle;
use crate::shutdown::{self, Phase};

/// Pause after a failed accept (EMFILE and the like), so we neither spin nor stall long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Accepts clients for one frontend until its listener is shut down.
pub(super) async fn accept_loop(
    id: usize,
    registry: Rc<Registry>,
    listener: Rc<TcpListener>,
    state: Rc<RefCell<Rc<FrontendState>>>,
    mut stopped: watch::Receiver<bool>,
    mut phase: shutdown::Watch,
    throttle: Rc<Throttle>,
) {
    loop {
        if *stopped.borrow() {
            break;
        }
        // At the process's connection ceiling or the frontend's max-conns,
        // wait for a slot before accepting: the kernel's backlog holds new
        // clients meanwhile.
        let slot = tokio::select! {
            slot = registry.ceiling().acquire() => slot,
            _ = shutdown::reached(&mut phase, Phase::Draining) => break,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let limit = state.borrow().frontend.limit.clone();
        let permit = match limit {
            Some(limit) => tokio::select! {
                permit = limit.acquire_owned() => match permit {
                    Ok(permit) => Some(permit),
                    // Closed, which nothing does.
                    Err(_) => break,
                },
                _ = shutdown::reached(&mut phase, Phase::Draining) => break,
                _ = stopped.wait_for(|s| *s) => break,
            },
            None => None,
        };
        // Nothing runs between this check and the accept's submission (one
        // thread), so no accept starts after `Running::stop` cancelled them.
        if *stopped.borrow() {
            break;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                let state = state.borrow().clone();
                tokio_uring::spawn(conn::handle(
                    registry.clone(),
                    state,
                    stream,
                    peer,
                    (slot, permit),
                ));
            }
            Err(_) if *stopped.borrow() || *phase.borrow() >= Phase::Draining => break,
            // Cancelled to be submitted afresh (`Running::rearm`).
            Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(err) => {
                let state = state.borrow().clone();
                state.metrics().accept_errors.inc();
                if let Some(suppressed) = throttle.allow(Instant::now()) {
                    warn!(worker = id, frontend = state.name(), %err, suppressed, "accept failed; backing off");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
