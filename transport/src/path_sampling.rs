//! When a link's reader looks at QUIC's path statistics ([`PathSampler`]): about once
//! per [`PATH_SAMPLE_INTERVAL`] on a busy link, never on an idle one. Path choice
//! (DirectConnection) judges losses from these samples; the reader, which sees every
//! frame anyway, only decides when to take one.

use std::time::{Duration, Instant};

/// Least time between two samples of one link: a few per quality window of path
/// choice (16 heartbeats, half a minute), and one look at QUIC's statistics per busy
/// link every 5 s.
pub const PATH_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Frames a link must carry in per two [`PATH_SAMPLE_INTERVAL`]s to be sampled, and how
/// many frames pass between two looks at the clock: an idle session's heartbeats (one
/// frame in every 2 s) never reach the rate, so idle sessions cost no sample, and path
/// choice judges losses only over spans of 64 KiB or more anyway.
pub const PATH_SAMPLE_MIN_FRAMES: u32 = 20;

/// Counts a link's incoming frames and says when to sample its path. The clock is read
/// by the caller, and only when [`PathSampler::frame`] asks for it (once per
/// [`PATH_SAMPLE_MIN_FRAMES`] frames).
#[derive(Debug, Clone)]
pub struct PathSampler {
    /// When the span being counted started.
    span_start: Instant,
    /// Frames in that span.
    span_frames: u32,
}

impl PathSampler {
    /// A sampler whose first span starts at `now` (the link came up).
    pub fn new(now: Instant) -> Self {
        Self {
            span_start: now,
            span_frames: 0,
        }
    }

    /// A frame came in; `now` is called only when the clock is needed. True: sample
    /// the path now (the span lasted at least one interval and at most two, with at
    /// least [`PATH_SAMPLE_MIN_FRAMES`] frames). A span longer than two intervals is a
    /// link too idle to judge: it starts over without a sample.
    pub fn frame(&mut self, now: impl FnOnce() -> Instant) -> bool {
        self.span_frames = self.span_frames.saturating_add(1);
        if self.span_frames % PATH_SAMPLE_MIN_FRAMES != 0 {
            return false;
        }
        let now = now();
        let span = now.saturating_duration_since(self.span_start);
        if span < PATH_SAMPLE_INTERVAL {
            return false;
        }
        self.span_start = now;
        self.span_frames = 0;
        span <= 2 * PATH_SAMPLE_INTERVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `frames` frames spread evenly over `over`, from `start`; returns the
    /// moments a sample was asked for and the moment after the last frame.
    fn feed(
        sampler: &mut PathSampler,
        start: Instant,
        frames: u32,
        over: Duration,
    ) -> (Vec<Duration>, Instant) {
        let step = over / frames;
        let mut at = start;
        let mut samples = Vec::new();
        for _ in 0..frames {
            at += step;
            if sampler.frame(|| at) {
                samples.push(at - start);
            }
        }
        (samples, at)
    }

    #[test]
    fn an_idle_link_is_never_sampled() {
        let t0 = Instant::now();
        let mut sampler = PathSampler::new(t0);
        // A heartbeat every 2 s for ten minutes.
        let (samples, _) = feed(&mut sampler, t0, 300, Duration::from_secs(600));
        assert_eq!(samples, Vec::<Duration>::new());
    }

    #[test]
    fn a_busy_link_is_sampled_about_every_interval() {
        let t0 = Instant::now();
        let mut sampler = PathSampler::new(t0);
        // 100 frames a second for 30 s: a sample every 5 s.
        let (samples, _) = feed(&mut sampler, t0, 3_000, Duration::from_secs(30));
        let secs: Vec<u64> = samples.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 15, 20, 25, 30]);
    }

    #[test]
    fn a_link_that_turns_busy_after_idling_is_sampled_one_interval_later() {
        let t0 = Instant::now();
        let mut sampler = PathSampler::new(t0);
        let (idle, after_idle) = feed(&mut sampler, t0, 30, Duration::from_secs(60));
        assert!(idle.is_empty());
        let (busy, _) = feed(&mut sampler, after_idle, 1_000, Duration::from_secs(10));
        assert!(!busy.is_empty(), "sampled once busy");
        assert!(
            busy[0] <= 2 * PATH_SAMPLE_INTERVAL,
            "first sample {:?} after it turned busy",
            busy[0]
        );
    }

    #[test]
    fn the_clock_is_read_once_per_twenty_frames() {
        let t0 = Instant::now();
        let mut sampler = PathSampler::new(t0);
        let mut reads = 0;
        for _ in 0..200 {
            sampler.frame(|| {
                reads += 1;
                t0
            });
        }
        assert_eq!(reads, 200 / PATH_SAMPLE_MIN_FRAMES);
    }
}
