//! Rate limits and retries: the one retry loop between taskmaster and GitHub.
//!
//! GitHub's rules (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>):
//!
//! * a 403 or 429 with `retry-after` means *wait that many seconds*;
//! * else, with `x-ratelimit-remaining: 0`, *wait until `x-ratelimit-reset`*
//!   (epoch seconds) — the primary limit;
//! * else a 429, or a 403 whose message speaks of a rate limit, is a
//!   **secondary** limit: wait at least a minute, and longer each time.
//!   Continuing while limited can get an integration banned;
//! * content-creating requests are limited to 80 a minute (and 500 an hour):
//!   [`Pacer`] spaces them out per installation before they are sent.
//!
//! Beyond rate limits, 5xx answers are retried with exponential backoff, and
//! a 404 is retried briefly for requests about objects a webhook has just
//! announced (the API can lag the webhook:
//! <https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api>).
//!
//! **There is exactly one retry loop.** octocrab is built without its `retry`
//! feature, so it never retries on its own; the only thing it repeats is a
//! request answered 401, once, after fetching a fresh installation token
//! (that is authentication, not a retry loop, and it happens inside one
//! attempt here). The outbox, in turn, must not retry an error immediately:
//! it schedules the effect for later.
//!
//! Every wait goes through [`RetryPolicy::sleep`], whose `time_scale` lets
//! tests run the real schedule in milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, StatusCode};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How the client retries and paces requests. All durations are unscaled:
/// [`RetryPolicy::time_scale`] is applied when sleeping.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included. Default 5.
    pub max_attempts: u32,
    /// The first wait on a secondary rate limit without `retry-after`;
    /// doubled on each further one. GitHub asks for at least 60 s.
    pub secondary_base: Duration,
    /// The first wait after a 5xx; doubled each time. Default 1 s.
    pub server_error_base: Duration,
    /// How many times a 404 is retried for requests that may race a webhook.
    /// Default 2.
    pub not_found_retries: u32,
    /// The wait before each such 404 retry. Default 1 s.
    pub not_found_wait: Duration,
    /// The longest one wait may be. A longer demand (a primary limit reset
    /// 40 minutes away) ends the request with
    /// [`crate::github::GitHubError::RateLimited`] so the caller can schedule
    /// it instead of holding a worker. Default 5 minutes.
    pub max_wait: Duration,
    /// The least time between two content-creating requests of one
    /// installation: 60 s / 80 = 750 ms.
    pub content_interval: Duration,
    /// Multiplies every wait when sleeping: 1.0 in production, e.g. 0.001 in
    /// tests. Reported waits (errors) are unscaled.
    pub time_scale: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            secondary_base: Duration::from_secs(60),
            server_error_base: Duration::from_secs(1),
            not_found_retries: 2,
            not_found_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(5 * 60),
            content_interval: Duration::from_millis(750),
            time_scale: 1.0,
        }
    }
}

impl RetryPolicy {
    /// The default policy with every wait scaled by `time_scale` (tests).
    pub fn scaled(time_scale: f64) -> Self {
        Self {
            time_scale,
            ..Self::default()
        }
    }

    /// Sleeps for `wait` × [`RetryPolicy::time_scale`].
    pub async fn sleep(&self, wait: Duration) {
        tokio::time::sleep(self.scale(wait)).await;
    }

    /// `wait` × [`RetryPolicy::time_scale`].
    pub fn scale(&self, wait: Duration) -> Duration {
        wait.mul_f64(self.time_scale.max(0.0))
    }
}

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the answer to the caller (success, or an error retrying won't fix).
    Done,
    /// Send the same request again after this long (unscaled).
    RetryAfter(Duration),
}

/// The facts about one answer that decide whether to retry it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    /// GitHub's `message` field, when the body had one.
    pub message: &'a str,
}

/// Decides whether to retry an answer. `attempt` counts from 1 (the attempt
/// that got this answer); `retry_not_found` is true for requests about an
/// object a webhook may have announced moments ago; `now` is the wall clock
/// (for `x-ratelimit-reset`).
///
/// Waits on the retry of a last attempt are not returned: once `attempt`
/// reaches `policy.max_attempts`, the verdict is always [`Verdict::Done`].
pub fn classify(
    policy: &RetryPolicy,
    answer: Answer<'_>,
    attempt: u32,
    retry_not_found: bool,
    now: SystemTime,
) -> Verdict {
    if attempt >= policy.max_attempts {
        return Verdict::Done;
    }
    let status = answer.status;
    if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
        if let Some(wait) = retry_after(answer.headers) {
            return Verdict::RetryAfter(wait);
        }
        if header_u64(answer.headers, "x-ratelimit-remaining") == Some(0) {
            let wait = header_u64(answer.headers, "x-ratelimit-reset")
                .map(|reset| {
                    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                    // One extra second: the reset is whole seconds and clocks drift.
                    Duration::from_secs(reset.saturating_sub(now) + 1)
                })
                .unwrap_or(policy.secondary_base);
            return Verdict::RetryAfter(wait);
        }
        let secondary = status == StatusCode::TOO_MANY_REQUESTS
            || answer.message.to_ascii_lowercase().contains("rate limit");
        if secondary {
            return Verdict::RetryAfter(backoff(policy.secondary_base, attempt));
        }
        // A plain 403: a missing permission. Retrying will not grant it.
        return Verdict::Done;
    }
    if status.is_server_error() {
        return Verdict::RetryAfter(backoff(policy.server_error_base, attempt));
    }
    if status == StatusCode::NOT_FOUND && retry_not_found && attempt <= policy.not_found_retries {
        return Verdict::RetryAfter(policy.not_found_wait);
    }
    Verdict::Done
}

/// `base` × 2^(attempt − 1), capped at an hour.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(12);
    (base * factor).min(Duration::from_secs(3600))
}

/// The `retry-after` header in seconds (GitHub sends seconds, never a date).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    header_u64(headers, "retry-after").map(Duration::from_secs)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Spaces out content-creating requests (comments, check runs, reactions) of
/// one installation so no more than one starts per `interval` — 750 ms keeps
/// under GitHub's 80 a minute.
///
/// Source: <https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits>
#[derive(Debug)]
pub struct Pacer {
    next: Mutex<Option<Instant>>,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// A pacer whose first request goes at once.
    pub fn new() -> Self {
        Self {
            next: Mutex::new(None),
        }
    }

    /// Waits until the next content-creating request may start, and books
    /// the slot after it `interval` (already scaled) later.
    pub async fn acquire(&self, interval: Duration) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        let start = match *next {
            Some(at) if at > now => at,
            _ => now,
        };
        *next = Some(start + interval);
        // Holding the lock while sleeping queues the callers in order.
        tokio::time::sleep_until(start).await;
    }
}

/// Remembers that a primary rate limit ran out (an answer, even a 2xx, with
/// `x-ratelimit-remaining: 0`), so the next request of that installation
/// waits for `x-ratelimit-reset` instead of being sent and refused.
///
/// Source: <https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#handle-rate-limit-errors-appropriately>
#[derive(Debug, Default)]
pub struct ResetGate {
    until: std::sync::Mutex<Option<SystemTime>>,
}

impl ResetGate {
    /// Reads the rate-limit headers of an answer: remaining 0 closes the gate
    /// until the reset (plus a second); a positive remaining opens it.
    pub fn observe(&self, headers: &HeaderMap) {
        let mut until = self.until.lock().expect("reset gate lock");
        match header_u64(headers, "x-ratelimit-remaining") {
            Some(0) => {
                if let Some(reset) = header_u64(headers, "x-ratelimit-reset") {
                    *until = Some(UNIX_EPOCH + Duration::from_secs(reset + 1));
                }
            }
            Some(_) => *until = None,
            None => {}
        }
    }

    /// How long to wait (unscaled) before sending at `now`, if at all.
    pub fn wait_at(&self, now: SystemTime) -> Option<Duration> {
        let until = (*self.until.lock().expect("reset gate lock"))?;
        until.duration_since(now).ok().filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    fn verdict(
        status: u16,
        pairs: &[(&'static str, &str)],
        message: &str,
        attempt: u32,
    ) -> Verdict {
        let h = headers(pairs);
        classify(
            &RetryPolicy::default(),
            Answer {
                status: StatusCode::from_u16(status).unwrap(),
                headers: &h,
                message,
            },
            attempt,
            true,
            UNIX_EPOCH + Duration::from_secs(1_000),
        )
    }

    #[test]
    fn retry_after_wins() {
        assert_eq!(
            verdict(403, &[("retry-after", "7")], "secondary rate limit", 1),
            Verdict::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            verdict(429, &[("retry-after", "3")], "", 1),
            Verdict::RetryAfter(Duration::from_secs(3))
        );
    }

    #[test]
    fn primary_limit_waits_for_reset() {
        assert_eq!(
            verdict(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1030")
                ],
                "API rate limit exceeded",
                1
            ),
            Verdict::RetryAfter(Duration::from_secs(31))
        );
    }

    #[test]
    fn secondary_limit_backs_off_from_a_minute() {
        assert_eq!(
            verdict(403, &[], "You have exceeded a secondary rate limit", 1),
            Verdict::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            verdict(429, &[], "", 3),
            Verdict::RetryAfter(Duration::from_secs(240))
        );
    }

    #[test]
    fn permission_403_and_client_errors_are_final() {
        assert_eq!(
            verdict(403, &[], "Resource not accessible by integration", 1),
            Verdict::Done
        );
        assert_eq!(verdict(422, &[], "Validation Failed", 1), Verdict::Done);
        assert_eq!(verdict(401, &[], "Bad credentials", 1), Verdict::Done);
    }

    #[test]
    fn server_errors_back_off_and_stop_at_max_attempts() {
        assert_eq!(
            verdict(502, &[], "", 2),
            Verdict::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(verdict(502, &[], "", 5), Verdict::Done);
    }

    #[test]
    fn not_found_is_retried_briefly() {
        assert_eq!(
            verdict(404, &[], "Not Found", 1),
            Verdict::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(verdict(404, &[], "Not Found", 3), Verdict::Done);
    }

    #[test]
    fn reset_gate_closes_on_zero_and_opens_on_remaining() {
        let gate = ResetGate::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        gate.observe(&headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1010"),
        ]));
        assert_eq!(gate.wait_at(now), Some(Duration::from_secs(11)));
        assert_eq!(gate.wait_at(now + Duration::from_secs(20)), None);
        gate.observe(&headers(&[("x-ratelimit-remaining", "4999")]));
        assert_eq!(gate.wait_at(now), None);
    }

    #[tokio::test]
    async fn pacer_spaces_requests() {
        let pacer = Pacer::new();
        let start = Instant::now();
        for _ in 0..4 {
            pacer.acquire(Duration::from_millis(20)).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(60));
    }
}
