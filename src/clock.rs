//! A monotonic clock counting from when it was made, read as an integer so
//! deadlines and timestamps fit in atomics (breakers, health, budgets,
//! buckets, the adaptive limit). Built on `tokio::time::Instant`, so tests
//! can pause and advance it.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    /// Milliseconds since the clock was made.
    pub fn now_ms(&self) -> u64 {
        millis(self.elapsed())
    }

    /// Nanoseconds since the clock was made.
    pub fn now_ns(&self) -> u64 {
        nanos(self.elapsed())
    }

    fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.0)
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// Whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Nanoseconds, saturating.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}
