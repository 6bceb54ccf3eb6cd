//! Rate limits of the relay server: token buckets driven by the `now` the core is given
//! (no clock read), one per kind of request, per connection and per identity.
//!
//! A bucket holds at most `burst` tokens and gains `per_second` tokens a second; each
//! request takes one, and a request that finds the bucket empty is refused. It is kept
//! as one instant (the generic cell rate algorithm's "theoretical arrival time"), so it
//! costs no float and no periodic refill: a bucket whose instant has passed is full.

use std::time::{Duration, Instant};

/// One rate: a sustained number of requests a second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests a second, sustained (at least 1 is used).
    pub per_second: u32,
    /// Requests accepted at once from a full bucket (at least 1 is used).
    pub burst: u32,
}

impl Rate {
    /// Time one token takes to come back.
    fn interval(self) -> Duration {
        Duration::from_secs(1) / self.per_second.max(1)
    }

    /// How far ahead of `now` a bucket may be booked: `burst` intervals.
    fn tolerance(self) -> Duration {
        self.interval() * self.burst.max(1)
    }
}

/// One token bucket. A new bucket is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// When the bucket is full again; `None` (or a past instant) means full now.
    full_at: Option<Instant>,
}

impl Bucket {
    /// Whether a request at `now` would be accepted (takes nothing).
    pub(crate) fn allows(&self, now: Instant, rate: Rate) -> bool {
        let booked = self.booked(now);
        booked + rate.interval() <= rate.tolerance()
    }

    /// Takes one token at `now` (call only after [`allows`](Self::allows)).
    pub(crate) fn take(&mut self, now: Instant, rate: Rate) {
        self.full_at = Some(now + self.booked(now) + rate.interval());
    }

    /// When the bucket is full again, if it is not at `now`.
    pub(crate) fn full_at(&self, now: Instant) -> Option<Instant> {
        self.full_at.filter(|at| *at > now)
    }

    /// Time until the bucket is full again.
    fn booked(&self, now: Instant) -> Duration {
        self.full_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }
}

/// The kinds of request that are rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limited {
    /// `Enqueue`: stores an envelope.
    Enqueue,
    /// `Forward`: sends a frame to every connection of another device.
    Forward,
    /// Rendezvous `Publish`: stores a hint.
    Publish,
}

impl Limited {
    /// Its name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enqueue => "enqueue",
            Self::Forward => "forward",
            Self::Publish => "publish",
        }
    }
}

/// One rate for each kind of limited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `Enqueue` requests.
    pub enqueue: Rate,
    /// `Forward` requests.
    pub forward: Rate,
    /// Rendezvous `Publish` requests.
    pub publish: Rate,
}

impl RateLimits {
    fn rate(&self, kind: Limited) -> Rate {
        match kind {
            Limited::Enqueue => self.enqueue,
            Limited::Forward => self.forward,
            Limited::Publish => self.publish,
        }
    }
}

/// The buckets of one connection or one identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Buckets {
    enqueue: Bucket,
    forward: Bucket,
    publish: Bucket,
}

impl Buckets {
    fn bucket(&mut self, kind: Limited) -> &mut Bucket {
        match kind {
            Limited::Enqueue => &mut self.enqueue,
            Limited::Forward => &mut self.forward,
            Limited::Publish => &mut self.publish,
        }
    }

    /// Whether a request of `kind` at `now` would be accepted.
    pub(crate) fn allows(&mut self, now: Instant, limits: &RateLimits, kind: Limited) -> bool {
        self.bucket(kind).allows(now, limits.rate(kind))
    }

    /// Takes one token of `kind` at `now`.
    pub(crate) fn take(&mut self, now: Instant, limits: &RateLimits, kind: Limited) {
        self.bucket(kind).take(now, limits.rate(kind));
    }

    /// When every bucket is full again, if one is not at `now`: until then, forgetting
    /// them would hand out a fresh burst.
    pub(crate) fn full_at(&self, now: Instant) -> Option<Instant> {
        [self.enqueue, self.forward, self.publish]
            .iter()
            .filter_map(|b| b.full_at(now))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_takes_its_burst_then_one_request_per_interval() {
        let rate = Rate {
            per_second: 10,
            burst: 3,
        };
        let t0 = Instant::now();
        let mut bucket = Bucket::default();
        for _ in 0..3 {
            assert!(bucket.allows(t0, rate));
            bucket.take(t0, rate);
        }
        assert!(!bucket.allows(t0, rate), "burst spent");
        assert!(!bucket.allows(t0 + Duration::from_millis(99), rate));
        assert!(bucket.allows(t0 + Duration::from_millis(100), rate));
        bucket.take(t0 + Duration::from_millis(100), rate);
        assert!(!bucket.allows(t0 + Duration::from_millis(100), rate));
        // Idle long enough, it is full again: three at once.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(bucket.full_at(later), None);
        for _ in 0..3 {
            assert!(bucket.allows(later, rate));
            bucket.take(later, rate);
        }
        assert!(!bucket.allows(later, rate));
    }
}
