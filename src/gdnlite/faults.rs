//! Fault injection for tests and benches: latency, 5xx and 429 answers, connection resets and
//! per-document errors, drawn from a seeded generator so a run can be repeated exactly.

use std::sync::Mutex;
use std::time::Duration;

/// Which faults to inject, and how often (rates are probabilities in `0.0..=1.0`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Added to every fabric request before it is handled.
    pub latency: Duration,
    /// Share of fabric requests answered 503 without being applied.
    pub error_5xx_rate: f64,
    /// Share of fabric requests answered 429 without being applied.
    pub rate_limit_rate: f64,
    /// Share of fabric requests whose connection is dropped without an answer.
    pub reset_rate: f64,
    /// Share of documents in write requests that fail with an injected per-document error.
    pub document_error_rate: f64,
    /// Seed of the generator; the same seed and request order give the same faults.
    pub seed: Option<u64>,
}

impl FaultConfig {
    /// Whether any fault is configured at all.
    pub fn is_active(&self) -> bool {
        !self.latency.is_zero()
            || self.error_5xx_rate > 0.0
            || self.rate_limit_rate > 0.0
            || self.reset_rate > 0.0
            || self.document_error_rate > 0.0
    }

    /// Checks that every rate is a probability.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_5xx_rate", self.error_5xx_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("reset_rate", self.reset_rate),
            ("document_error_rate", self.document_error_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

/// What to do with one request, decided before it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    /// Handle it normally.
    None,
    /// Answer 503.
    Unavailable,
    /// Answer 429.
    RateLimited,
    /// Drop the connection without an answer.
    Reset,
}

/// The seeded generator and the configuration it serves.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    state: Mutex<u64>,
}

impl Faults {
    /// A generator for `config`; without a seed, the clock seeds it.
    pub fn new(config: FaultConfig) -> Faults {
        let seed = config.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9)
        });
        Faults {
            config,
            state: Mutex::new(seed),
        }
    }

    /// The configured latency.
    pub fn latency(&self) -> Duration {
        self.config.latency
    }

    /// Draws the fault for one fabric request.
    pub fn request_fault(&self) -> RequestFault {
        let c = &self.config;
        if c.error_5xx_rate <= 0.0 && c.rate_limit_rate <= 0.0 && c.reset_rate <= 0.0 {
            return RequestFault::None;
        }
        let draw = self.next_unit();
        if draw < c.reset_rate {
            RequestFault::Reset
        } else if draw < c.reset_rate + c.error_5xx_rate {
            RequestFault::Unavailable
        } else if draw < c.reset_rate + c.error_5xx_rate + c.rate_limit_rate {
            RequestFault::RateLimited
        } else {
            RequestFault::None
        }
    }

    /// Draws whether one document of a write fails with an injected error.
    pub fn document_fails(&self) -> bool {
        self.config.document_error_rate > 0.0 && self.next_unit() < self.config.document_error_rate
    }

    fn next_unit(&self) -> f64 {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let value = splitmix64(&mut state);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// SplitMix64: a small, well-distributed generator; plenty for fault draws.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults() {
        let config = FaultConfig {
            error_5xx_rate: 0.2,
            rate_limit_rate: 0.2,
            reset_rate: 0.1,
            document_error_rate: 0.3,
            seed: Some(42),
            ..FaultConfig::default()
        };
        let a = Faults::new(config.clone());
        let b = Faults::new(config);
        let draws_a: Vec<_> = (0..200)
            .map(|_| (a.request_fault(), a.document_fails()))
            .collect();
        let draws_b: Vec<_> = (0..200)
            .map(|_| (b.request_fault(), b.document_fails()))
            .collect();
        assert_eq!(draws_a, draws_b);
        let resets = draws_a
            .iter()
            .filter(|d| d.0 == RequestFault::Reset)
            .count();
        let unavailable = draws_a
            .iter()
            .filter(|d| d.0 == RequestFault::Unavailable)
            .count();
        assert!((5..40).contains(&resets), "resets {resets}");
        assert!((20..70).contains(&unavailable), "503s {unavailable}");
    }

    #[test]
    fn no_faults_by_default() {
        let f = Faults::new(FaultConfig::default());
        assert!((0..100).all(|_| f.request_fault() == RequestFault::None && !f.document_fails()));
        assert!(FaultConfig {
            reset_rate: 1.5,
            ..FaultConfig::default()
        }
        .validate()
        .is_err());
    }
}
