//! The stop signal, from the signal thread to every worker. The main thread
//! turns SIGINT/SIGTERM into a [`Phase`] published on a watch channel; each
//! worker reads it off its own receiver. Only touched at start and stop, never
//! on the data path.

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
}

/// Waits until the phase is at least `phase`. Returns at once if the trigger is gone.
pub async fn reached(watch: &mut Watch, phase: Phase) {
    let _ = watch.wait_for(|p| *p >= phase).await;
}
