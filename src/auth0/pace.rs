//! Pacing of Management API requests, so that we are never the caller that exhausts the tenant's limit.
//!
//! Auth0's limit is per tenant and shared with the customer's other automation, so the pacer slows down
//! *before* Auth0 refuses anything. Two rules, both applied to request start times:
//!
//! 1. Fixed spacing of `1 / max_requests_per_second`. The next slot is computed from the previous *slot*, not
//!    from when the previous response arrived, so request latency does not lower the rate; a caller that comes
//!    back late gets the current time, so idle time never accumulates into a burst.
//! 2. What Auth0 says: `x-ratelimit-remaining: 0` holds the next request until `x-ratelimit-reset`, and a 429
//!    holds it until the later of its `Retry-After` and that reset. While requests remain, the coarse
//!    one-second reset is ignored.
//!
//! A waiting future can be dropped at any time; if it held the newest slot, the slot is given back.
//!
//! The same answers also tell the fetcher when to poll less while idle ([`pressure`]): a 429, or a bucket at
//! or below a tenth of its size, means someone (this daemon or the customer's other automation) is using up
//! the tenant's budget.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

/// A reset further away than this is treated as clock skew or garbage and clamped.
const MAX_RESET_WAIT: Duration = Duration::from_secs(60);
/// The longest `Retry-After` we honour as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The shortest wait after a 429 whose reset lies in the past: retrying at once would only be refused again.
const MIN_429_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Pacer {
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    /// The earliest start of the next request by the spacing rule.
    next_slot: Option<Instant>,
    /// The earliest start of any request by what Auth0 said.
    blocked_until: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(max_requests_per_second: f64) -> Pacer {
        let rps = if max_requests_per_second.is_finite() && max_requests_per_second > 0.0 {
            max_requests_per_second
        } else {
            1.0
        };
        Pacer {
            interval: Duration::from_secs_f64(1.0 / rps),
            state: Mutex::new(State { next_slot: None, blocked_until: None }),
        }
    }

    /// Wait for this request's turn.
    pub(crate) async fn wait(&self) {
        let slot = self.reserve(Instant::now());
        let mut guard = SlotGuard { pacer: self, slot, armed: true };
        tokio::time::sleep_until(slot.into()).await;
        // A block that arrived while we slept (another request saw remaining = 0 or a 429) applies to us too.
        loop {
            let blocked = self.state.lock().unwrap_or_else(|p| p.into_inner()).blocked_until;
            match blocked {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until.into()).await,
                _ => break,
            }
        }
        guard.armed = false;
    }

    /// Take the next start slot at or after `now` (and after any block).
    fn reserve(&self, now: Instant) -> Instant {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut slot = s.next_slot.map_or(now, |n| n.max(now));
        if let Some(b) = s.blocked_until {
            slot = slot.max(b);
        }
        s.next_slot = Some(slot + self.interval);
        slot
    }

    /// Give back a slot that was not used, if it is still the newest one.
    fn release(&self, slot: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.next_slot == Some(slot + self.interval) {
            s.next_slot = Some(slot);
        }
    }

    /// Learn from a response's status and rate-limit headers.
    pub(crate) fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        let now = Instant::now();
        let hold = if status == StatusCode::TOO_MANY_REQUESTS {
            Some(retry_after(headers).unwrap_or(MIN_429_WAIT))
        } else if remaining(headers) == Some(0) {
            // Without a usable reset, one second is the granularity Auth0 refills at.
            Some(reset_wait(headers).unwrap_or(Duration::from_secs(1)))
        } else {
            None
        };
        if let Some(hold) = hold {
            let until = now + hold;
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.blocked_until.is_none_or(|b| b < until) {
                s.blocked_until = Some(until);
            }
            tracing::debug!(
                status = status.as_u16(),
                hold_ms = hold.as_millis() as u64,
                "pacing: holding requests"
            );
        }
    }
}

/// Gives an unused slot back when a waiting future is dropped before its turn.
struct SlotGuard<'a> {
    pacer: &'a Pacer,
    slot: Instant,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed && Instant::now() < self.slot {
            self.pacer.release(self.slot);
        }
    }
}

/// How long a 429 asks us to wait: the later of `Retry-After` (seconds, or an HTTP date as RFC 9110 also
/// allows) and `x-ratelimit-reset` (an absolute epoch in seconds) minus now, since asking before either has
/// passed is refused again. Every number is read into a bounded range before any arithmetic: a reset in the
/// past counts for nothing (and alone waits a second), an absurd `Retry-After` (say `1e20`) waits at most
/// [`MAX_RETRY_AFTER`] and says so at warn level; an unreadable header counts as absent.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let named = if headers.contains_key("retry-after") {
        crate::http::retry_after(headers, MAX_RETRY_AFTER)
    } else {
        None
    };
    match (named, reset_wait(headers)) {
        (Some(named), reset) => Some(named.max(reset.unwrap_or_default())),
        (None, reset) => reset.map(|d| d.max(MIN_429_WAIT)),
    }
}

/// What an answer says about pressure on the tenant's budget: a 429, or `x-ratelimit-remaining` at or below
/// a tenth of `x-ratelimit-limit`. `None` when the answer shows none (or the headers are
/// missing or unreadable). The text is ours, with the numbers as read, so it can be logged and shown.
pub(crate) fn pressure(status: StatusCode, headers: &HeaderMap) -> Option<String> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Some("Auth0 answered 429 Too Many Requests".into());
    }
    let limit = header_text(headers, "x-ratelimit-limit")?.parse::<f64>().ok()?;
    let left = remaining(headers)?;
    if !(limit.is_finite() && limit >= 1.0) {
        return None;
    }
    let limit = limit.min(u64::MAX as f64) as u64;
    (left.saturating_mul(10) <= limit.saturating_mul(PRESSURE_REMAINING_TENTHS)).then(|| {
        format!("x-ratelimit-remaining was {left} of x-ratelimit-limit {limit}, at or below a tenth")
    })
}

/// Pressure is a bucket at or below this many tenths of its size.
const PRESSURE_REMAINING_TENTHS: u64 = 1;

/// `x-ratelimit-reset - now`, within `[0, MAX_RESET_WAIT]`; `None` when absent or unreadable.
fn reset_wait(headers: &HeaderMap) -> Option<Duration> {
    let reset = header_text(headers, "x-ratelimit-reset")?
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    let delta = reset - now;
    if delta <= 0.0 {
        return Some(Duration::ZERO);
    }
    Some(crate::http::capped(delta, MAX_RESET_WAIT, "x-ratelimit-reset"))
}

/// `x-ratelimit-remaining` as a whole number, when readable.
fn remaining(headers: &HeaderMap) -> Option<u64> {
    let v = header_text(headers, "x-ratelimit-remaining")?.parse::<f64>().ok()?;
    (v.is_finite() && v >= 0.0).then(|| v.min(u64::MAX as f64) as u64)
}

/// A header's value as trimmed text, when it is short, printable ASCII.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (v.len() <= 64).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn epoch() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn a_429_waits_for_the_later_of_retry_after_and_the_reset() {
        let h = headers(&[("retry-after", "7".into()), ("x-ratelimit-reset", (epoch() + 30).to_string())]);
        let wait = retry_after(&h).expect("a wait");
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{wait:?}");
        let h = headers(&[("retry-after", "7".into()), ("x-ratelimit-reset", (epoch() - 30).to_string())]);
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(&[("retry-after", "7".into())])), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_may_be_an_http_date() {
        let at = chrono::Utc::now() + chrono::Duration::seconds(20);
        let h = headers(&[("retry-after", at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())]);
        let wait = retry_after(&h).expect("a wait");
        assert!(wait > Duration::from_secs(17) && wait <= Duration::from_secs(20), "{wait:?}");
        let past = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".into())]);
        assert_eq!(retry_after(&past), Some(Duration::ZERO));
    }

    #[test]
    fn a_reset_in_the_past_or_garbage_stays_bounded() {
        assert_eq!(retry_after(&headers(&[("x-ratelimit-reset", "1".into())])), Some(MIN_429_WAIT));
        assert_eq!(retry_after(&headers(&[("x-ratelimit-reset", "soon".into())])), None);
        let far = retry_after(&headers(&[("x-ratelimit-reset", (epoch() + 86_400).to_string())])).unwrap();
        assert!(far <= MAX_RESET_WAIT);
    }

    #[test]
    fn slots_follow_the_previous_slot_not_the_response() {
        let p = Pacer::new(10.0);
        let t0 = Instant::now();
        assert_eq!(p.reserve(t0), t0);
        // The caller came back 60 ms later (the response time): its slot is still 100 ms after the first.
        assert_eq!(p.reserve(t0 + Duration::from_millis(60)), t0 + Duration::from_millis(100));
        // After idling, the slot is the present: idle time does not build up a burst.
        assert_eq!(p.reserve(t0 + Duration::from_secs(5)), t0 + Duration::from_secs(5));
    }

    #[test]
    fn a_released_slot_is_handed_out_again() {
        let p = Pacer::new(1.0);
        let t0 = Instant::now();
        p.reserve(t0);
        let second = p.reserve(t0);
        p.release(second);
        assert_eq!(p.reserve(t0), second);
    }

    #[test]
    fn remaining_zero_holds_the_next_slot_until_the_reset() {
        let p = Pacer::new(100.0);
        let h = headers(&[
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", (epoch() + 3).to_string()),
        ]);
        p.observe(StatusCode::OK, &h);
        let slot = p.reserve(Instant::now());
        assert!(slot > Instant::now() + Duration::from_secs(1), "the slot must wait for the reset");
    }

    #[test]
    fn remaining_above_zero_ignores_the_reset() {
        let p = Pacer::new(100.0);
        let h = headers(&[
            ("x-ratelimit-remaining", "1".into()),
            ("x-ratelimit-reset", (epoch() + 3).to_string()),
        ]);
        p.observe(StatusCode::OK, &h);
        let now = Instant::now();
        assert_eq!(p.reserve(now), now);
    }

    #[test]
    fn a_429_or_a_bucket_at_a_tenth_is_pressure() {
        assert!(pressure(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()).is_some());
        let at = |left: &str, limit: &str| {
            pressure(
                StatusCode::OK,
                &headers(&[("x-ratelimit-remaining", left.into()), ("x-ratelimit-limit", limit.into())]),
            )
        };
        assert!(at("1", "10").is_some_and(|r| r.contains("1 of x-ratelimit-limit 10")));
        assert!(at("0", "10").is_some());
        assert!(at("2", "10").is_none());
        assert!(at("10", "100").is_some());
        assert!(at("11", "100").is_none());
        // Without a limit, or with garbage, nothing is concluded.
        assert!(at("0", "0").is_none());
        assert!(at("0", "soon").is_none());
        assert!(at("0", "NaN").is_none());
        assert!(pressure(StatusCode::OK, &headers(&[("x-ratelimit-remaining", "0".into())])).is_none());
        assert!(at("0", "1e300").is_some());
    }

    /// A header value as a server might send it: numbers of every shape, dates, or any bytes at all.
    fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop::option::of(prop_oneof![
            any::<f64>().prop_map(|n| n.to_string().into_bytes()),
            any::<f64>().prop_map(|n| format!("{n:e}").into_bytes()),
            any::<u64>().prop_map(|n| n.to_string().into_bytes()),
            any::<i64>().prop_map(|n| n.to_string().into_bytes()),
            "[0-9eE.+-]{0,30}".prop_map(String::into_bytes),
            prop::sample::select(vec!["1e20", "-0", "-0.0", "0", "inf", "-inf", "NaN", "1e-320", " 7 ", ""])
                .prop_map(|s| s.as_bytes().to_vec()),
            "(Mon|Tue|Xyz), [0-9]{1,2} (Jan|Oct|Foo) [0-9]{1,7} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|\\+9999|-0000)"
                .prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..80),
        ])
    }

    proptest! {
        /// Whatever `Retry-After`, `x-ratelimit-reset` and `x-ratelimit-remaining` a server sends, reading
        /// them never panics, and no wait or hold they cause is longer than its cap.
        #[test]
        fn any_rate_limit_headers_are_read_without_panicking(
            retry in header_value(),
            reset in header_value(),
            remaining in header_value(),
            status in prop::sample::select(vec![200u16, 429, 500, 503]),
        ) {
            let mut h = HeaderMap::new();
            for (name, value) in
                [("retry-after", retry), ("x-ratelimit-reset", reset), ("x-ratelimit-remaining", remaining)]
            {
                // Only what an HTTP client would hand over as a header value at all.
                if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                    h.insert(name, v);
                }
            }
            let longest = MAX_RETRY_AFTER.max(MAX_RESET_WAIT);
            if let Some(wait) = retry_after(&h) {
                prop_assert!(wait <= longest, "{wait:?}");
            }
            let _ = pressure(StatusCode::from_u16(status).unwrap(), &h);
            let p = Pacer::new(10.0);
            let before = Instant::now();
            p.observe(StatusCode::from_u16(status).unwrap(), &h);
            let slot = p.reserve(Instant::now());
            prop_assert!(slot <= Instant::now() + longest, "held {:?}", slot - before);
            // And the slot after it follows by the spacing, without overflow.
            prop_assert!(p.reserve(Instant::now()) > slot);
        }
    }
}
