//! Sliding-window replay protection for explicit nonces (RFC 6479, as WireGuard).
//!
//! The window remembers which of the last [`REPLAY_WINDOW_BITS`] nonces below the
//! greatest one seen have arrived. It is a ring of 64-bit blocks with one spare block,
//! so sliding forward only clears whole blocks instead of shifting bits. Checking and
//! marking are separate: a frame is checked, then decrypted, and marked only once it
//! authenticates, so a forged frame cannot move the window.

use std::fmt;

use thiserror::Error;

/// How far below the greatest nonce seen a frame may arrive and still be accepted.
/// 8192 as the design asks (WireGuard's ring is the same size but its usable window is
/// one block shorter); at 1 KiB per generation it tolerates heavy reordering across
/// paths during a migration.
pub const REPLAY_WINDOW_BITS: u64 = 8192;

/// Bits per ring block (one machine word).
const BLOCK_BITS: u64 = 64;

/// Blocks in the ring: the window plus one spare block, so the block being cleared by
/// a slide is never one still inside the window.
const RING_BLOCKS: usize = (REPLAY_WINDOW_BITS / BLOCK_BITS) as usize + 1;

/// Why a nonce was refused by the window.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This nonce was already accepted.
    #[error("nonce {0} was already received")]
    Duplicate(u64),
    /// This nonce is too far below the greatest one seen to be tracked.
    #[error("nonce {nonce} is older than the replay window (greatest seen {greatest})")]
    TooOld {
        /// The refused nonce.
        nonce: u64,
        /// The greatest nonce accepted so far.
        greatest: u64,
    },
}

/// The received-nonce window of one generation's receiving direction.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    blocks: [u64; RING_BLOCKS],
    /// Greatest nonce accepted, `None` before the first.
    greatest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every nonce is fresh.
    pub fn new() -> Self {
        Self {
            blocks: [0; RING_BLOCKS],
            greatest: None,
        }
    }

    /// The greatest nonce accepted so far.
    pub fn greatest(&self) -> Option<u64> {
        self.greatest
    }

    /// Whether `nonce` would be accepted. Does not change the window.
    pub fn check(&self, nonce: u64) -> Result<(), ReplayError> {
        let Some(greatest) = self.greatest else {
            return Ok(());
        };
        if nonce > greatest {
            return Ok(());
        }
        if greatest - nonce >= REPLAY_WINDOW_BITS {
            return Err(ReplayError::TooOld { nonce, greatest });
        }
        if self.blocks[block_index(nonce)] & bit(nonce) != 0 {
            return Err(ReplayError::Duplicate(nonce));
        }
        Ok(())
    }

    /// Records `nonce` as received, sliding the window forward if it is the newest.
    /// Call only after [`Self::check`] passed and the frame authenticated; a nonce
    /// outside the window is ignored.
    pub fn mark(&mut self, nonce: u64) {
        match self.greatest {
            Some(greatest) if nonce <= greatest => {
                if greatest - nonce >= REPLAY_WINDOW_BITS {
                    return;
                }
            }
            Some(greatest) => {
                let current = greatest / BLOCK_BITS;
                let target = nonce / BLOCK_BITS;
                // Clear every block the slide passes, at most the whole ring.
                let steps = (target - current).min(RING_BLOCKS as u64);
                for step in 1..=steps {
                    self.blocks[block_index((current + step) * BLOCK_BITS)] = 0;
                }
                self.greatest = Some(nonce);
            }
            None => self.greatest = Some(nonce),
        }
        self.blocks[block_index(nonce)] |= bit(nonce);
    }

    /// How many nonces inside the window have been received (for status output).
    pub fn received_in_window(&self) -> u32 {
        self.blocks.iter().map(|b| b.count_ones()).sum()
    }
}

fn block_index(nonce: u64) -> usize {
    // The remainder is below RING_BLOCKS, so it fits in usize.
    ((nonce / BLOCK_BITS) % RING_BLOCKS as u64) as usize
}

fn bit(nonce: u64) -> u64 {
    1 << (nonce % BLOCK_BITS)
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("greatest", &self.greatest)
            .field("received_in_window", &self.received_in_window())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn accept(window: &mut ReplayWindow, nonce: u64) -> Result<(), ReplayError> {
        window.check(nonce)?;
        window.mark(nonce);
        Ok(())
    }

    #[test]
    fn nonce_zero_first_then_duplicate() {
        let mut w = ReplayWindow::new();
        assert_eq!(accept(&mut w, 0), Ok(()));
        assert_eq!(accept(&mut w, 0), Err(ReplayError::Duplicate(0)));
        assert_eq!(accept(&mut w, 1), Ok(()));
        assert_eq!(accept(&mut w, 1), Err(ReplayError::Duplicate(1)));
    }

    #[test]
    fn window_edge_plus_minus_one() {
        let top = 100_000;
        let mut w = ReplayWindow::new();
        accept(&mut w, top).unwrap();
        // The oldest nonce still inside: top - (WINDOW - 1).
        let oldest_inside = top - (REPLAY_WINDOW_BITS - 1);
        assert_eq!(w.check(oldest_inside), Ok(()));
        assert_eq!(
            w.check(oldest_inside - 1),
            Err(ReplayError::TooOld {
                nonce: oldest_inside - 1,
                greatest: top
            })
        );
        assert_eq!(accept(&mut w, oldest_inside + 1), Ok(()));
        assert_eq!(accept(&mut w, oldest_inside), Ok(()));
        assert_eq!(
            accept(&mut w, oldest_inside),
            Err(ReplayError::Duplicate(oldest_inside))
        );
        // One step forward pushes the oldest out.
        accept(&mut w, top + 1).unwrap();
        assert!(matches!(
            w.check(oldest_inside),
            Err(ReplayError::TooOld { .. })
        ));
        assert_eq!(
            w.check(oldest_inside + 1),
            Err(ReplayError::Duplicate(oldest_inside + 1))
        );
    }

    #[test]
    fn far_past_is_too_old() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 1 << 40).unwrap();
        assert!(matches!(w.check(0), Err(ReplayError::TooOld { .. })));
        assert!(matches!(
            w.check((1 << 40) - REPLAY_WINDOW_BITS),
            Err(ReplayError::TooOld { .. })
        ));
    }

    #[test]
    fn far_future_jump_clears_stale_bits_then_old_ones_inside_are_accepted() {
        let mut w = ReplayWindow::new();
        for n in 0..200 {
            accept(&mut w, n).unwrap();
        }
        // A jump of exactly one ring's worth of bits: the old bits of the same ring
        // slots must not be taken for received nonces.
        let jump = 200 + RING_BLOCKS as u64 * BLOCK_BITS;
        accept(&mut w, jump).unwrap();
        for n in (jump - REPLAY_WINDOW_BITS + 1)..jump {
            assert_eq!(w.check(n), Ok(()), "nonce {n} wrongly refused");
        }
        for n in 0..200 {
            assert!(matches!(w.check(n), Err(ReplayError::TooOld { .. })));
        }
        // Old-but-inside nonces after the jump are accepted once each.
        let inside = jump - 5;
        assert_eq!(accept(&mut w, inside), Ok(()));
        assert_eq!(accept(&mut w, inside), Err(ReplayError::Duplicate(inside)));
        // A huge jump (more than the whole ring) clears everything.
        let huge = jump + (1 << 50);
        accept(&mut w, huge).unwrap();
        assert_eq!(w.received_in_window(), 1);
        assert_eq!(w.check(huge - 1), Ok(()));
    }

    #[test]
    fn u64_max_region() {
        let mut w = ReplayWindow::new();
        let near_max = u64::MAX - 10;
        accept(&mut w, near_max).unwrap();
        assert_eq!(accept(&mut w, u64::MAX), Ok(()));
        assert_eq!(
            accept(&mut w, u64::MAX),
            Err(ReplayError::Duplicate(u64::MAX))
        );
        assert_eq!(accept(&mut w, near_max - 1), Ok(()));
        assert_eq!(
            accept(&mut w, near_max),
            Err(ReplayError::Duplicate(near_max))
        );
        assert!(matches!(w.check(0), Err(ReplayError::TooOld { .. })));
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 10).unwrap();
        let before = w.clone();
        let _ = w.check(11);
        let _ = w.check(10);
        let _ = w.check(u64::MAX);
        assert_eq!(w, before);
    }

    proptest! {
        /// The window agrees with an exact model: a nonce is accepted iff it was never
        /// accepted and is within WINDOW of the greatest accepted so far.
        #[test]
        fn window_matches_exact_model(
            start in prop_oneof![Just(0_u64), any::<u64>().prop_map(|n| n / 2), Just(u64::MAX - 40_000)],
            steps in proptest::collection::vec((any::<bool>(), 0_u64..20_000), 1..300),
        ) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut greatest: Option<u64> = None;
            let mut cursor = start;
            for (forward, delta) in steps {
                let nonce = if forward {
                    cursor.saturating_add(delta)
                } else {
                    cursor.saturating_sub(delta)
                };
                cursor = nonce;
                let expected_ok = !seen.contains(&nonce)
                    && greatest.is_none_or(|g| nonce > g || g - nonce < REPLAY_WINDOW_BITS);
                let got = accept(&mut w, nonce);
                prop_assert_eq!(got.is_ok(), expected_ok, "nonce {} greatest {:?}", nonce, greatest);
                if got.is_ok() {
                    seen.insert(nonce);
                    greatest = Some(greatest.map_or(nonce, |g| g.max(nonce)));
                }
            }
        }
    }
}
