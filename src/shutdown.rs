//! The stop signal, from the signal thread to every worker. The main thread
//! turns SIGINT/SIGTERM into a [`Phase`] published on a watch channel; each
//! worker reads it off its own receiver; a hot upgrade's control socket
//! escalates it the same way, then waits on [`Accepting`] until every worker
//! stopped accepting. Only touched at start and stop, never on the data path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Where the process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and relaying.
    Running,
    /// Stopped accepting; open connections may finish within the drain timeout.
    Draining,
    /// Close everything now (a second signal).
    Abort,
}

/// The sending side, held by whoever watches for signals.
#[derive(Debug)]
pub struct Trigger(watch::Sender<Phase>);

/// A worker's view of the phase.
pub type Watch = watch::Receiver<Phase>;

/// A new trigger and the first receiver.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(Phase::Running);
    (Trigger(tx), rx)
}

impl Trigger {
    /// Moves to the next phase (Running -> Draining -> Abort); returns it.
    pub fn escalate(&self) -> Phase {
        let mut next = Phase::Abort;
        self.0.send_modify(|phase| {
            *phase = match *phase {
                Phase::Running => Phase::Draining,
                _ => Phase::Abort,
            };
            next = *phase;
        });
        next
    }

    /// The phase [`Trigger::escalate`] would move to now: announce it before
    /// escalating, since once the workers see it the process may be gone
    /// before another line runs.
    pub fn next(&self) -> Phase {
        match *self.0.borrow() {
            Phase::Running => Phase::Draining,
            _ => Phase::Abort,
        }
    }

    /// Moves a running process to draining (a hot upgrade's handover); a
    /// process already stopping stays where it is.
    pub fn drain(&self) {
        self.0.send_if_modified(|phase| {
            let running = *phase == Phase::Running;
            if running {
                *phase = Phase::Draining;
            }
            running
        });
    }
}

/// Waits until the phase is at least `phase`. Returns at once if the trigger is gone.
pub async fn reached(watch: &mut Watch, phase: Phase) {
    let _ = watch.wait_for(|p| *p >= phase).await;
}

/// How many workers still accept new clients, so a hot upgrade can tell
/// the new process once the old one has let go of every listener; and
/// whether the listeners go to such a successor (then they must stay
/// open, rather than be shut down so that new clients are refused).
#[derive(Debug)]
pub struct Accepting {
    /// Set before the drain of a hot upgrade.
    handed_over: AtomicBool,
    /// Workers whose accept loops have not all ended.
    count: Mutex<usize>,
    /// Signalled when `count` reaches zero.
    none: Condvar,
    /// Bumped to have every worker submit its accepts afresh.
    rearm: watch::Sender<u64>,
}

impl Accepting {
    /// `workers` workers, all accepting.
    pub fn new(workers: usize) -> Accepting {
        Accepting {
            handed_over: AtomicBool::new(false),
            count: Mutex::new(workers),
            none: Condvar::new(),
            rearm: watch::Sender::new(0),
        }
    }

    /// The listeners now belong to a successor too: a drain must leave
    /// them open. Called before the phase moves to draining.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::SeqCst);
    }

    /// Whether [`Accepting::hand_over`] was called.
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst)
    }

    /// One worker's accept loops have all ended.
    pub fn stopped(&self) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.none.notify_all();
        }
    }

    /// Has every worker submit its accepts afresh: a hot upgrade's new
    /// process calls it once the old one has stopped accepting. While the
    /// old process cancelled its accepts on the shared listeners, one of
    /// them could take the kernel's wake-up for a client (an io_uring
    /// accept waits exclusively: one waiter is woken per arrival) and then
    /// end cancelled, leaving that client queued with nobody woken for it
    /// until the next arrival on the same socket. A fresh accept finds it.
    pub fn rearm(&self) {
        self.rearm.send_modify(|n| *n += 1);
    }

    /// What a worker watches for [`Accepting::rearm`].
    pub fn rearmed(&self) -> watch::Receiver<u64> {
        self.rearm.subscribe()
    }

    /// Waits up to `timeout` until no worker accepts; returns whether none does.
    pub fn wait_none(&self, timeout: Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        let (count, _) = self
            .none
            .wait_timeout_while(count, timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_moves_only_a_running_process() {
        let (trigger, watch) = channel();
        trigger.drain();
        assert_eq!(*watch.borrow(), Phase::Draining);
        trigger.drain();
        assert_eq!(
            *watch.borrow(),
            Phase::Draining,
            "a second drain is no abort"
        );
        assert_eq!(trigger.escalate(), Phase::Abort);
        trigger.drain();
        assert_eq!(*watch.borrow(), Phase::Abort);
    }

    #[test]
    fn next_is_what_escalate_moves_to() {
        let (trigger, _watch) = channel();
        assert_eq!(trigger.next(), Phase::Draining);
        assert_eq!(trigger.escalate(), Phase::Draining);
        assert_eq!(trigger.next(), Phase::Abort);
        assert_eq!(trigger.escalate(), Phase::Abort);
        assert_eq!(trigger.next(), Phase::Abort);
    }

    #[test]
    fn accepting_counts_down_to_none() {
        let accepting = std::sync::Arc::new(Accepting::new(2));
        assert!(!accepting.wait_none(Duration::from_millis(1)));
        accepting.stopped();
        let other = accepting.clone();
        let t = std::thread::spawn(move || other.stopped());
        assert!(accepting.wait_none(Duration::from_secs(30)));
        t.join().unwrap();
    }
}
