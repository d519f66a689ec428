//! One worker: an OS thread running its own tokio-uring runtime, with the
//! ring's per-worker resources (the provided-buffer ring, the registered
//! file table), and the [`Service`]s it runs on them: the TCP service
//! ([`TcpService`]) and the UDP service ([`UdpService`]). It hands every service each new generation,
//! trims memory after bursts, and on shutdown stops every service's
//! accepting, waits for their clients to finish (the drain), and cuts what
//! is left at the drain timeout.
//!
//! All state here is per worker (`Rc`, `Cell`, `RefCell`): tasks never cross
//! threads, so nothing on the data path takes a lock or shares a cache line.

use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::ceiling::Ceiling;
use crate::frontend::Generations;
use crate::service::Service;
use crate::shutdown::{self, Accepting, Phase};
use crate::tcp::TcpService;
use crate::udp::UdpService;
use crate::uring;

/// How often a worker looks whether a burst ended and memory can go back.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Starts worker `id` on its own thread. Returns once its runtime is built, or
/// the error that kept it from being built.
pub fn spawn(
    id: usize,
    generations: Generations,
    phase: shutdown::Watch,
    ceiling: Arc<Ceiling>,
    accepting: Arc<Accepting>,
) -> io::Result<thread::JoinHandle<()>> {
    let (pin, sqpoll) = {
        let first = generations.borrow();
        (first.config.pin, first.config.sqpoll)
    };
    let pin_to = if pin {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        (!cores.is_empty()).then(|| cores[id % cores.len()])
    } else {
        None
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(format!("ringlb-w{id}"))
        .spawn(move || {
            if let Some(core) = pin_to {
                if !core_affinity::set_for_current(core) {
                    warn!(worker = id, core = core.id, "cannot pin worker to its CPU");
                }
            }
            let rt = match uring::build_runtime(sqpoll) {
                Ok(rt) => rt,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            rt.block_on(serve(id, generations, phase, ready_tx, ceiling, accepting));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(io::Error::other("worker thread died while starting")),
    }
}

async fn serve(
    id: usize,
    mut generations: Generations,
    mut phase: shutdown::Watch,
    ready: mpsc::Sender<io::Result<()>>,
    ceiling: Arc<Ceiling>,
    accepting: Arc<Accepting>,
) {
    // Receives that wait on an idle peer take their buffer from this ring
    // when data arrives, so an idle connection holds none of its own.
    if let Err(err) = uring::provide_buffers(
        uring::PROVIDED_BUFFERS,
        uring::FIRST_PROVIDED_BUFFERS,
        uring::PROVIDED_BUFFER_SIZE,
    ) {
        debug!(worker = id, %err, "no provided-buffer ring: every receive brings its own buffer");
    }
    // The relay's sockets are named by their slot in this table, which
    // spares the kernel a descriptor lookup on every operation.
    let slots = (2 * ceiling.max()).min(uring::FIXED_FILES) as u32;
    if let Err(err) = uring::register_file_table(slots) {
        debug!(worker = id, %err, "no registered file table: sockets are named by descriptor");
    }
    let mut services: Vec<Box<dyn Service>> = vec![
        Box::new(TcpService::new(id, ceiling.clone(), phase.clone())),
        Box::new(UdpService::new(id, ceiling)),
    ];
    let first = generations.borrow_and_update().clone();
    for service in &mut services {
        if let Err(err) = service.apply(&first) {
            let _ = ready.send(Err(err));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    let drain_timeout = first.config.drain_timeout;
    drop(first);

    let mut rearm = accepting.rearmed();
    let mut trim = tokio::time::interval(TRIM_INTERVAL);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = trim.tick() => {
                if uring::shrink_buffers() {
                    debug!(worker = id, "the provided-buffer ring a burst grew is replaced by a small one");
                }
                services.iter().for_each(|s| s.trim());
            }
            Ok(()) = rearm.changed() => services.iter().for_each(|s| s.rearm()),
            changed = generations.changed() => {
                if changed.is_err() {
                    break;
                }
                let generation = generations.borrow_and_update().clone();
                for service in &mut services {
                    if let Err(err) = service.apply(&generation) {
                        warn!(worker = id, %err, "cannot take up the new config's listener");
                    }
                }
            }
            _ = shutdown::reached(&mut phase, Phase::Draining) => break,
        }
    }

    let keep_open = accepting.handed_over();
    let stopped: Vec<_> = services.iter_mut().map(|s| s.stop(keep_open)).collect();
    for stopped in stopped {
        stopped.await;
    }
    // A client accepted just before the stop is handed to a task that has
    // not run yet, so it is not registered: let those tasks run (they
    // register before their first await), or the drain below would find
    // nothing open and end the worker without them.
    tokio::task::yield_now().await;
    accepting.stopped();

    let open: usize = services.iter().map(|s| s.open()).sum();
    if open > 0 {
        info!(worker = id, open, "draining connections");
    }
    let all_idle = || {
        let idle: Vec<_> = services.iter().map(|s| s.idle()).collect();
        async move {
            for idle in idle {
                idle.await;
            }
        }
    };
    let cut = tokio::select! {
        _ = all_idle() => false,
        _ = tokio::time::sleep(drain_timeout) => {
            let cut: usize = services.iter().map(|s| s.open()).sum();
            warn!(worker = id, cut, "drain timeout after {drain_timeout:?}: cutting {cut} open connection(s)");
            true
        }
        _ = shutdown::reached(&mut phase, Phase::Abort) => true,
    };
    if cut {
        services.iter().for_each(|s| s.abort());
        all_idle().await;
    }
    uring::release_buffers();
    uring::release_file_table();
}
