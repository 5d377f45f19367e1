//! What one try against an upstream came to, and the compiled sets of
//! outcomes that `retry.on` and `circuit_breaker.failures` name.

use crate::config::OutcomeName;

/// The result of one try, as retries, breakers and outlier detection see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived with this status.
    Status(u16),
    ConnectError,
    /// The connection closed or broke before a complete response head.
    Reset,
    Timeout,
}

impl Outcome {
    /// A failure of the endpoint itself (not of the application behind it):
    /// what outlier detection counts.
    pub fn is_transport_failure(self) -> bool {
        !matches!(self, Outcome::Status(_))
    }
}

/// A set of outcomes, matched in a few instructions per try.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeSet {
    connect_error: bool,
    reset: bool,
    timeout: bool,
    /// Bit `s - 400` for each status 400..=599.
    statuses: [u128; 2],
}

impl OutcomeSet {
    pub fn new(names: &[OutcomeName]) -> OutcomeSet {
        let mut set = OutcomeSet::default();
        for name in names {
            match *name {
                OutcomeName::ConnectError => set.connect_error = true,
                OutcomeName::Reset => set.reset = true,
                OutcomeName::Timeout => set.timeout = true,
                OutcomeName::Any5xx => (500..=599).for_each(|s| set.add_status(s)),
                OutcomeName::Status(s) => set.add_status(s),
            }
        }
        set
    }

    fn add_status(&mut self, status: u16) {
        if let Some(bit) = status.checked_sub(400).filter(|b| *b < 200) {
            self.statuses[usize::from(bit / 128)] |= 1u128 << (bit % 128);
        }
    }

    pub fn contains(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::ConnectError => self.connect_error,
            Outcome::Reset => self.reset,
            Outcome::Timeout => self.timeout,
            Outcome::Status(s) => match s.checked_sub(400).filter(|b| *b < 200) {
                Some(bit) => self.statuses[usize::from(bit / 128)] & (1u128 << (bit % 128)) != 0,
                None => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_match_what_they_name() {
        let set = OutcomeSet::new(&[OutcomeName::ConnectError, OutcomeName::Status(503)]);
        assert!(set.contains(Outcome::ConnectError));
        assert!(set.contains(Outcome::Status(503)));
        assert!(!set.contains(Outcome::Status(502)));
        assert!(!set.contains(Outcome::Status(200)));
        assert!(!set.contains(Outcome::Reset));
        let any = OutcomeSet::new(&[OutcomeName::Any5xx]);
        assert!(any.contains(Outcome::Status(500)) && any.contains(Outcome::Status(599)));
        assert!(!any.contains(Outcome::Status(499)) && !any.contains(Outcome::Timeout));
    }
}
