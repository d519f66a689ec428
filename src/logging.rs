//! Log set-up and the one logging helper the data path needs: a throttle that
//! keeps a repeating warning (backend down, accept failing) to one line per
//! interval, counting what it suppressed.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

// The format is a setting, so the type is config's.
pub use crate::config::LogFormat;

/// Where access log lines go, so they can be let through whatever the level.
pub const ACCESS_TARGET: &str = "ringlb::access";

/// Installs the global subscriber writing to stderr. `filter` overrides
/// RUST_LOG; with `access_log`, access lines pass whatever the filter says.
pub fn init(format: LogFormat, filter: Option<&str>, access_log: bool) -> Result<(), String> {
    let mut filter = match filter {
        Some(f) => EnvFilter::try_new(f).map_err(|e| format!("invalid --log-level '{f}': {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    if access_log {
        let directive = format!("{ACCESS_TARGET}=info")
            .parse()
            .map_err(|e| format!("{e}"))?;
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| e.to_string())
}

/// Allows one event per `interval`; per worker, so a `Cell` suffices.
#[derive(Debug)]
pub struct Throttle {
    /// Minimum time between two allowed events.
    interval: Duration,
    /// When the last allowed event happened.
    last: Cell<Option<Instant>>,
    /// Events refused since then.
    suppressed: Cell<u64>,
}

impl Throttle {
    /// A throttle allowing one event per `interval`.
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Whether to log now; if so, returns how many events were suppressed since the last one.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_per_interval() {
        let t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_millis(1500)), None);
    }
}
