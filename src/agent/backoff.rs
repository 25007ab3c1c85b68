//! Reconnect delays: exponential with "equal jitter" (AWS architecture blog,
//! "Exponential Backoff And Jitter"), written by hand in a few lines rather
//! than pulling in a crate. The random source is injected for tests.
//!
//! Equal rather than full jitter: at the 30 s cap an agent waits 15–30 s,
//! never a pointless 0.1 s against a gateway that has been gone for minutes,
//! while a fleet cut off at once still spreads its returns over each step's
//! upper half.

use std::time::Duration;

/// Exponential backoff with equal jitter: attempt `n` waits a uniformly
/// random time in `[c/2, c]` where `c = min(max, base * 2^n)`; never less
/// than a small floor.
pub struct Backoff {
    base: Duration,
    max: Duration,
    floor: Duration,
    attempt: u32,
    random: Box<dyn FnMut() -> f64 + Send>,
}

impl Backoff {
    /// `random` returns values in `[0, 1)`.
    pub fn new(
        base: Duration,
        max: Duration,
        random: impl FnMut() -> f64 + Send + 'static,
    ) -> Self {
        Backoff {
            base,
            max,
            floor: Duration::from_millis(100).min(base),
            attempt: 0,
            random: Box::new(random),
        }
    }

    /// 1 s to 30 s, seeded from the OS.
    pub fn reconnect_default() -> Self {
        Backoff::reconnect(crate::config::DEFAULT_RECONNECT_MAX)
    }

    /// 1 s (or `max`, if smaller) to `max`, seeded from the OS.
    pub fn reconnect(max: Duration) -> Self {
        Backoff::new(Duration::from_secs(1).min(max), max, rand::random::<f64>)
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next delay; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let r = (self.random)().clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + r / 2.0).max(self.floor)
    }

    /// The maximum delay, for failures that retrying sooner cannot fix.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Back to the first step, after a connection proved stable.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(b: &mut Backoff, n: usize) -> Vec<f64> {
        (0..n).map(|_| b.next_delay().as_secs_f64()).collect()
    }

    #[test]
    fn ceilings_double_to_the_max() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), || {
            0.999_999
        });
        let d = secs(&mut b, 7);
        let expect = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0];
        for (got, want) in d.iter().zip(expect) {
            assert!((got - want).abs() < 0.001, "{d:?}");
        }
    }

    #[test]
    fn equal_jitter_spans_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), || 0.0);
        assert_eq!(secs(&mut b, 7), vec![0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), || 0.5);
        assert_eq!(secs(&mut b, 3), vec![0.75, 1.5, 3.0]);
        // The floor holds for tiny bases.
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), || 0.0);
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), || {
            0.999_999
        });
        secs(&mut b, 5);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::reconnect_default();
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
