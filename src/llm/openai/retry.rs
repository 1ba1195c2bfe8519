//! When to try a remote call again and how long to wait: exponential backoff with full jitter, a server's
//! `Retry-After` (seconds or an HTTP date) honoured, and the durations of Groq's `x-ratelimit-reset-*`
//! headers (`2m59.56s`, `7.66s`, `120ms`). Arithmetic only; the provider decides what is retried (429, 5xx,
//! connection errors, and only before the first token).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// First backoff step.
pub const BASE_DELAY: Duration = Duration::from_millis(250);
/// Longest backoff step (before jitter), and longest `Retry-After` honoured: a server asking for more is
/// waited for this long at most, the call's own deadline still applies.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The wait before retry number `retry` (0 for the first retry): the server's `Retry-After` when it gave
/// one (capped at [`MAX_DELAY`]), otherwise full jitter over an exponential step: uniformly in
/// `0..=min(MAX_DELAY, BASE_DELAY * 2^retry)`, with `unit` in `0..1` the random draw.
pub fn delay(retry: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(MAX_DELAY);
    }
    let step = BASE_DELAY
        .checked_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY);
    step.mul_f64(unit.clamp(0.0, 1.0))
}

/// A random draw in `0..1` for the jitter (from a v4 UUID's random bits; no generator to seed or share).
pub fn jitter_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Reads a `Retry-After` value: delay-seconds, or an HTTP date (a date already past is no wait).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Reads a Go-style duration as Groq sends in `x-ratelimit-reset-*` (`1h2m3.5s`, `7.66s`, `120ms`), or
/// plain seconds.
pub fn parse_reset(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let mut total = 0.0;
    let mut rest = value;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    total.is_finite().then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_full_jitter() {
        assert_eq!(delay(0, None, 1.0), BASE_DELAY);
        assert_eq!(delay(1, None, 1.0), BASE_DELAY * 2);
        assert_eq!(delay(3, None, 1.0), BASE_DELAY * 8);
        assert_eq!(delay(3, None, 0.5), BASE_DELAY * 4);
        assert_eq!(delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(delay(40, None, 1.0), MAX_DELAY, "capped, no overflow");
        for _ in 0..100 {
            let unit = jitter_unit();
            assert!((0.0..1.0).contains(&unit));
            assert!(delay(2, None, unit) <= BASE_DELAY * 4);
        }
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let wait = Some(Duration::from_secs(2));
        assert_eq!(delay(5, wait, 0.0), Duration::from_secs(2));
        assert_eq!(delay(0, Some(Duration::from_secs(3600)), 0.5), MAX_DELAY);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn reset_durations_read_like_groq_sends_them() {
        assert_eq!(parse_reset("7.66s"), Some(Duration::from_secs_f64(7.66)));
        assert_eq!(
            parse_reset("2m59.56s"),
            Some(Duration::from_secs_f64(179.56))
        );
        assert_eq!(parse_reset("1h0m1s"), Some(Duration::from_secs(3601)));
        assert_eq!(parse_reset("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(parse_reset("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_reset(""), None);
        assert_eq!(parse_reset("5 parsecs"), None);
    }
}
