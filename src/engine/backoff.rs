//! Retry delays: exponential backoff with full jitter, honouring Retry-After.
//!
//! Full jitter (a uniformly random delay between zero and the exponential
//! ceiling, as in the AWS Architecture Blog's "Exponential Backoff and
//! Jitter") spreads retries of many steps that failed together — say when an
//! agent restarted — instead of sending them back in one synchronized wave.
//! When the agent said when to come back (HTTP `Retry-After`), the delay is
//! at least that: retrying earlier only earns another refusal.

use std::time::Duration;

use crate::workflow::{Backoff, RetryPolicy};

/// The delay before attempt `attempt` (2-based: the first retry is 2) on the
/// same agent: a uniformly random duration in `[0, ceiling]` where the
/// ceiling is [`RetryPolicy::delay_before`] (doubling from `initial_delay`,
/// capped at `max_delay`); a `fixed` policy waits exactly `initial_delay`.
/// Never shorter than `retry_after`.
pub fn retry_delay(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = policy.delay_before(attempt);
    let delay = match policy.backoff {
        Backoff::Fixed => ceiling,
        Backoff::Exponential => ceiling.mul_f64(fastrand::f64()),
    };
    match retry_after {
        Some(after) => delay.max(after),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        }
    }

    #[test]
    fn full_jitter_stays_under_a_doubling_ceiling() {
        let p = policy(Backoff::Exponential);
        for attempt in 2..=8u32 {
            let ceiling = p.delay_before(attempt);
            let samples: Vec<Duration> = (0..200).map(|_| retry_delay(&p, attempt, None)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Jitter: the samples are spread, not all at the ceiling.
            assert!(
                samples.iter().any(|d| *d < ceiling / 2),
                "attempt {attempt}"
            );
        }
        assert_eq!(p.delay_before(2), Duration::from_millis(100));
        assert_eq!(p.delay_before(4), Duration::from_millis(400));
        assert_eq!(p.delay_before(8), Duration::from_millis(1000));
    }

    #[test]
    fn retry_after_is_a_floor_and_fixed_is_fixed() {
        let p = policy(Backoff::Exponential);
        let after = Duration::from_secs(7);
        for _ in 0..50 {
            assert!(retry_delay(&p, 2, Some(after)) >= after);
        }
        assert_eq!(
            retry_delay(&policy(Backoff::Fixed), 5, None),
            Duration::from_millis(100)
        );
    }
}
