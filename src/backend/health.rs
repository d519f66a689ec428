//! Backend health as a pure threshold state machine, as in pingora: a backend
//! goes down after `fall` consecutive failed checks and comes back after
//! `rise` consecutive successful ones.
//!
//! It owns only the up/down state and the current streaks. Probing (sockets,
//! timeouts, scheduling) lives elsewhere and feeds results in through
//! [`HealthState::observe`], so transitions are testable without I/O or
//! clocks. Invariants: at most one of the two streaks is non-zero (a result
//! resets the opposite streak), and both are zero right after a flip, so a
//! new state always needs a full `rise` or `fall` run to be left again.

/// Up/down state of one backend plus the streak that may flip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// Consecutive successful checks since the last failure or flip.
    successes: u32,
    /// Consecutive failed checks since the last success or flip.
    failures: u32,
    /// Successes needed to bring a down backend up; at least 1.
    rise: u32,
    /// Failures needed to take an up backend down; at least 1.
    fall: u32,
}

impl HealthState {
    /// A backend that starts up, so traffic flows before the first check
    /// completes. A threshold of 0 is treated as 1: one result is the least
    /// that can justify a flip.
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState {
            up: true,
            successes: 0,
            failures: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Like [`HealthState::new`], but starting up or down as given: a reload
    /// hands a backend's known health to the new pool's prober.
    pub fn starting(up: bool, rise: u32, fall: u32) -> Self {
        HealthState {
            up,
            ..HealthState::new(rise, fall)
        }
    }

    /// Whether the backend may receive traffic.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check result; returns Some(new_state_is_up) when the state flipped.
    pub fn observe(&mut self, success: bool) -> Option<bool> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                return Some(self.flip(true));
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                return Some(self.flip(false));
            }
        }
        None
    }

    fn flip(&mut self, up: bool) -> bool {
        self.up = up;
        self.successes = 0;
        self.failures = 0;
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(h: &mut HealthState, results: &[bool]) -> Vec<Option<bool>> {
        results.iter().map(|&ok| h.observe(ok)).collect()
    }

    #[test]
    fn a_state_carried_down_needs_rise_successes() {
        let mut h = HealthState::starting(false, 2, 3);
        assert!(!h.is_up());
        assert_eq!(feed(&mut h, &[false, true, true]), [None, None, Some(true)]);
    }

    #[test]
    fn starts_up() {
        assert!(HealthState::new(2, 3).is_up());
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut h = HealthState::new(2, 3);
        assert_eq!(feed(&mut h, &[false, false]), [None, None]);
        assert!(h.is_up());
        assert_eq!(h.observe(false), Some(false));
        assert!(!h.is_up());
    }

    #[test]
    fn comes_up_after_rise_consecutive_successes() {
        let mut h = HealthState::new(2, 1);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), None);
        assert!(!h.is_up());
        assert_eq!(h.observe(true), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut h = HealthState::new(2, 3);
        let got = feed(&mut h, &[false, false, true, false, false]);
        assert_eq!(got, [None; 5]);
        assert!(h.is_up());
        assert_eq!(h.observe(false), Some(false));
    }

    #[test]
    fn a_failure_resets_the_success_streak() {
        let mut h = HealthState::new(3, 1);
        h.observe(false);
        let got = feed(&mut h, &[true, true, false, true, true]);
        assert_eq!(got, [None; 5]);
        assert!(!h.is_up());
        assert_eq!(h.observe(true), Some(true));
    }

    #[test]
    fn reports_only_flips() {
        let mut h = HealthState::new(2, 2);
        let got = feed(
            &mut h,
            &[
                true, true, true, false, false, false, false, true, true, true,
            ],
        );
        let want = [
            None,
            None,
            None,
            None,
            Some(false),
            None,
            None,
            None,
            Some(true),
            None,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn failures_while_down_do_not_count_towards_rising() {
        let mut h = HealthState::new(2, 1);
        assert_eq!(
            feed(&mut h, &[false, false, false, false]),
            [Some(false), None, None, None]
        );
        assert_eq!(feed(&mut h, &[true, true]), [None, Some(true)]);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let mut h = HealthState::new(0, 0);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), Some(true));
    }

    #[test]
    fn long_streaks_do_not_overflow() {
        let mut h = HealthState::new(1, u32::MAX);
        for _ in 0..10_000 {
            assert_eq!(h.observe(true), None);
        }
        assert!(h.is_up());
    }
}
