//! Rate limits on a device's traffic, in the manner of Firecracker's `RateLimiter`: a token
//! bucket for bytes and one for operations, either or both. A device asks [`RateLimiter::
//! ready`] before it takes a request from the guest and [`RateLimiter::charge`]s what the
//! request moved once served; when a bucket is empty it stops serving that queue and the
//! limiter's timer fd, which the device registers with the event loop, fires when the
//! buckets hold tokens again.
//!
//! A request is charged after it is served (its size is known only once its chain is
//! parsed), so a bucket may go into debt by at most one request; the next one waits until
//! the debt is refilled. Over any stretch longer than a refill the rate is the configured one.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::config::{BucketConfig, RateLimitConfig};

/// A token bucket: `size` tokens at most, refilled at `size` per `refill` (continuously).
#[derive(Debug)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u128,
    /// What the bucket holds, in tokens times nanoseconds of refill (exact: no rounding of
    /// partial tokens); negative is debt.
    credit: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(size: u64, refill: Duration, now: Instant) -> TokenBucket {
        let refill_ns = refill.as_nanos().max(1);
        TokenBucket {
            size,
            refill_ns,
            credit: (u128::from(size) * refill_ns) as i128,
            last: now,
        }
    }

    fn top_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now.max(self.last);
        let full = (u128::from(self.size) * self.refill_ns) as i128;
        self.credit = (self.credit + (elapsed * u128::from(self.size)) as i128).min(full);
    }

    /// How long until the bucket holds a token (zero if it does).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.top_up(now);
        if self.credit >= self.refill_ns as i128 {
            return Duration::ZERO;
        }
        let missing = (self.refill_ns as i128 - self.credit) as u128;
        let ns = missing.div_ceil(u128::from(self.size.max(1)));
        Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }

    /// Takes `n` tokens (the bucket may go into debt).
    pub fn take(&mut self, n: u64, now: Instant) {
        self.top_up(now);
        self.credit -= (u128::from(n) * self.refill_ns) as i128;
    }
}

/// A device queue's limits: bytes and operations, and the timer that wakes the device.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// When the armed timer fires; a request after it may go even if the timer's event has
    /// not been handled yet.
    armed: Option<Instant>,
}

impl RateLimiter {
    /// The limiter `config` describes; none when it sets no bucket.
    pub fn new(config: &RateLimitConfig) -> std::io::Result<Option<RateLimiter>> {
        let now = Instant::now();
        let bucket = |b: &BucketConfig| {
            TokenBucket::new(b.size, Duration::from_millis(b.refill_time_ms), now)
        };
        let (bytes, ops) = (config.bandwidth.as_ref(), config.ops.as_ref());
        if bytes.is_none() && ops.is_none() {
            return Ok(None);
        }
        let timer = TimerFd::new()?;
        // Non-blocking: an expiry already consumed by a re-arm must not block the event loop
        // in timer_fired's read.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fd = timer.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Some(RateLimiter {
            bytes: bytes.map(bucket),
            ops: ops.map(bucket),
            timer,
            armed: None,
        }))
    }

    /// Whether a request may be served now; if not, the timer is armed for when it may.
    pub fn ready(&mut self) -> bool {
        self.ready_at(Instant::now())
    }

    fn ready_at(&mut self, now: Instant) -> bool {
        match self.armed {
            Some(at) if now < at => return false,
            _ => self.armed = None,
        }
        let wait = [self.bytes.as_mut(), self.ops.as_mut()]
            .into_iter()
            .flatten()
            .map(|b| b.wait(now))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            return true;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => self.armed = Some(now + wait),
            // Without a timer the device would stall: serve rather than hang the guest.
            Err(e) => {
                log::warn!("rate limiter: cannot arm its timer ({e}); not limiting");
                return true;
            }
        }
        false
    }

    /// Charges one served request of `bytes`.
    pub fn charge(&mut self, bytes: u64) {
        let now = Instant::now();
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes, now);
        }
        if let Some(o) = self.ops.as_mut() {
            o.take(1, now);
        }
    }

    /// The timer fired (event loop): the device may serve again. (A stale event, its expiry
    /// consumed by a re-arm, reads nothing: EAGAIN.)
    pub fn timer_fired(&mut self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into our buffer from our non-blocking timerfd.
        unsafe { libc::read(self.timer.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        if self.armed.is_some_and(|at| Instant::now() >= at) {
            self.armed = None;
        }
    }

    /// The timer's fd, for the event loop.
    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Its raw fd.
    pub fn timer_fd(&self) -> i32 {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_at_its_rate_and_allows_one_request_of_debt() {
        let t0 = Instant::now();
        // 1000 bytes per 100 ms: 10 000 B/s.
        let mut b = TokenBucket::new(1000, Duration::from_millis(100), t0);
        assert_eq!(b.wait(t0), Duration::ZERO);
        b.take(3000, t0); // one large request: 2000 in debt
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(200) && w <= Duration::from_millis(201),
            "{w:?}"
        );
        assert!(b.wait(t0 + Duration::from_millis(150)) > Duration::ZERO);
        assert_eq!(b.wait(t0 + Duration::from_millis(201)), Duration::ZERO);
        // Never more than its size, however long it waits.
        let later = t0 + Duration::from_secs(10);
        b.wait(later);
        b.take(1000, later);
        assert!(b.wait(later) > Duration::ZERO, "a full bucket holds 1000");
    }

    #[test]
    fn the_long_run_rate_is_the_configured_one() {
        // Requests of 4096 bytes against 1 MiB/s in 100 ms buckets: over 10 simulated seconds
        // the bytes served are 10 MiB (plus the first bucket and one request).
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 16, Duration::from_micros(62_500), t0);
        let mut now = t0;
        let mut served = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let w = b.wait(now);
            if w.is_zero() {
                b.take(4096, now);
                served += 4096;
            } else {
                now += w;
            }
        }
        let rate = served as f64 / 10.0 / (1 << 20) as f64;
        assert!((0.99..1.02).contains(&rate), "{rate} MiB/s");
    }

    #[test]
    fn a_limiter_arms_its_timer_when_a_bucket_is_empty() {
        let config = RateLimitConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 2,
                refill_time_ms: 1000,
            }),
        };
        let mut l = RateLimiter::new(&config).unwrap().unwrap();
        assert!(l.ready());
        l.charge(1 << 20);
        assert!(l.ready());
        l.charge(1);
        assert!(!l.ready(), "two operations per second");
        assert!(l.armed.is_some());
        assert!(!l.ready(), "armed until the timer fires");
        // A stale event (the timer not due yet) neither blocks nor disarms.
        let t = Instant::now();
        l.timer_fired();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "timer_fired does not block"
        );
        assert!(l.armed.is_some());
        l.armed = Some(Instant::now());
        l.timer_fired();
        assert!(l.armed.is_none());
        let none = RateLimitConfig {
            bandwidth: None,
            ops: None,
        };
        assert!(RateLimiter::new(&none).unwrap().is_none());
    }
}
