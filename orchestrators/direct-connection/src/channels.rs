//! Exactly-once, in-order delivery per channel, independent of paths and key
//! generations.
//!
//! The sender numbers each message of a channel from 0 and keeps it until the peer's
//! cumulative acknowledgement covers it; it may send sequence numbers below the limit
//! the peer's acknowledgements grant. The receiver delivers in sequence order, buffers
//! what arrives early (within the credit it granted), and drops what it has already
//! delivered. Retransmissions (on a timer, or all at once when the path changes) are
//! therefore harmless: nothing is delivered twice and nothing acknowledged is resent.
//!
//! Credit follows consumption: a receiver grants `credit` messages beyond what the
//! application has consumed, not beyond what arrived, so an application that reads
//! slowly holds its sender back. The granted limit (next expected + credit − delivered
//! and not yet consumed) never moves backwards. A sender whose next message is beyond
//! the limit, with nothing in flight, probes with it every `rto` (as TCP's persist
//! timer): the receiver drops it while the window stays shut and answers with its
//! position, so a lost window update cannot stall the channel.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// One message waiting for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unacked {
    /// Its sequence number.
    pub seq: u64,
    /// Application bytes.
    pub payload: Vec<u8>,
    /// When it was last put on a path, if ever.
    pub last_sent: Option<Instant>,
}

/// The sending half of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outbound {
    next_seq: u64,
    /// Everything below this was acknowledged.
    acked_below: u64,
    /// The peer lets us send sequence numbers below this.
    send_limit: u64,
    unacked: VecDeque<Unacked>,
    /// The receiver has not been told where this channel stands yet (it is new here,
    /// perhaps after a restart): a Migrate marker goes before its first data.
    unannounced: bool,
    /// Random per channel and run of this device (see [`Inbound::resync`]).
    incarnation: u64,
    /// Bytes of the unacknowledged messages.
    queued_bytes: usize,
    /// When the window is shut with messages waiting: when to probe it next.
    probe_at: Option<Instant>,
}

impl Outbound {
    /// A channel whose peer initially grants `credit` messages; `incarnation` is a
    /// random number that tells this run of the channel from any earlier one.
    pub fn new(credit: u64, incarnation: u64) -> Self {
        Self {
            send_limit: credit,
            unannounced: true,
            incarnation,
            ..Self::default()
        }
    }

    /// A channel as a store kept it: the same incarnation and numbering, its
    /// unacknowledged messages queued again (none sent yet on this run), and a Migrate
    /// marker first so the receiver lines up with it.
    pub fn restore(
        credit: u64,
        incarnation: u64,
        next_seq: u64,
        acked_below: u64,
        unacked: Vec<(u64, Vec<u8>)>,
    ) -> Self {
        Self {
            next_seq,
            acked_below,
            send_limit: acked_below.saturating_add(credit),
            unacked: unacked
                .into_iter()
                .filter(|(seq, _)| *seq >= acked_below && *seq < next_seq)
                .map(|(seq, payload)| Unacked {
                    seq,
                    payload,
                    last_sent: None,
                })
                .collect(),
            unannounced: true,
            incarnation,
            queued_bytes: 0,
            probe_at: None,
        }
        .with_queued_bytes_counted()
    }

    fn with_queued_bytes_counted(mut self) -> Self {
        self.queued_bytes = self.unacked.iter().map(|m| m.payload.len()).sum();
        self
    }

    /// This run's incarnation number.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// True once, for a new channel: the caller sends a Migrate marker before its data.
    pub fn take_announcement(&mut self) -> bool {
        std::mem::take(&mut self.unannounced)
    }

    /// Queues a message; returns its sequence number.
    pub fn push(&mut self, payload: Vec<u8>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += payload.len();
        self.unacked.push_back(Unacked {
            seq,
            payload,
            last_sent: None,
        });
        seq
    }

    /// Messages accepted and not yet acknowledged.
    pub fn queued(&self) -> usize {
        self.unacked.len()
    }

    /// Bytes of the messages accepted and not yet acknowledged.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The next sequence number to be assigned.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number not yet acknowledged (all below it were).
    pub fn first_unacked(&self) -> u64 {
        self.acked_below
    }

    /// Applies a cumulative acknowledgement; returns how many messages it released.
    /// Acknowledgements never move backwards, and one beyond what was sent is ignored
    /// (a confused or hostile peer cannot make us forget unsent messages).
    pub fn ack(&mut self, next_expected: u64, credit: u64) -> usize {
        if next_expected > self.next_seq {
            return 0;
        }
        let mut released = 0;
        if next_expected > self.acked_below {
            self.acked_below = next_expected;
            while self.unacked.front().is_some_and(|m| m.seq < next_expected) {
                if let Some(message) = self.unacked.pop_front() {
                    self.queued_bytes -= message.payload.len();
                }
                released += 1;
            }
        }
        self.send_limit = self.send_limit.max(self.acked_below.saturating_add(credit));
        released
    }

    /// Messages to put on the path now: never sent, or sent more than `rto` ago (all of
    /// them when `resend_all` is set, after a path change), within the peer's credit;
    /// or, when the window is shut with nothing in flight, the first waiting message as
    /// a probe once every `rto`. Marks them sent at `now`.
    pub fn due(&mut self, now: Instant, rto: Duration, resend_all: bool) -> Vec<(u64, Vec<u8>)> {
        let limit = self.send_limit;
        let mut out = Vec::new();
        let shut = self.unacked.front().is_some_and(|m| m.seq >= limit);
        if !shut {
            self.probe_at = None;
        } else if let Some(first) = self.unacked.front_mut() {
            let probe_at = *self.probe_at.get_or_insert(now + rto);
            if resend_all || now >= probe_at {
                self.probe_at = Some(now + rto);
                first.last_sent = Some(now);
                out.push((first.seq, first.payload.clone()));
            }
            return out;
        }
        for message in self.unacked.iter_mut() {
            if message.seq >= limit {
                break;
            }
            let due = match message.last_sent {
                None => true,
                Some(at) => resend_all || now.saturating_duration_since(at) >= rto,
            };
            if due {
                message.last_sent = Some(now);
                out.push((message.seq, message.payload.clone()));
            }
        }
        out
    }

    /// When the oldest sent, unacknowledged message becomes due for retransmission, or
    /// the shut window for its next probe.
    pub fn next_retransmit(&self, rto: Duration) -> Option<Instant> {
        if self.probe_at.is_some() {
            return self.probe_at;
        }
        self.unacked
            .iter()
            .filter(|m| m.seq < self.send_limit)
            .filter_map(|m| m.last_sent)
            .min()
            .map(|at| at + rto)
    }
}

/// What the receiver did with one data frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// These messages are now deliverable, in order (possibly several, from the buffer).
    Deliver(Vec<(u64, Vec<u8>)>),
    /// Already delivered: a retransmission or a copy from another path.
    Duplicate,
    /// Ahead of the next expected one: kept until the gap fills.
    Buffered,
    /// Beyond the credit granted: dropped (the sender will resend).
    BeyondCredit,
}

/// The receiving half of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inbound {
    next_expected: u64,
    early: BTreeMap<u64, Vec<u8>>,
    /// The sender's incarnation of this channel, once a marker told it.
    sender_incarnation: Option<u64>,
    /// Bytes buffered in `early`.
    early_bytes: usize,
    /// Messages delivered that the application has not consumed yet.
    unconsumed: u64,
    /// The limit the last acknowledgement granted (next expected + window).
    advertised_limit: u64,
    /// In-order data frames taken since the last acknowledgement.
    frames_since_ack: u32,
}

impl Inbound {
    /// Whether `seq` would be delivered at once (it is the next expected).
    pub fn is_next(&self, seq: u64) -> bool {
        seq == self.next_expected
    }

    /// Takes one data frame; `credit` bounds how far beyond the consumed point it may
    /// be taken.
    pub fn receive(&mut self, seq: u64, payload: Vec<u8>, credit: u64) -> Received {
        if seq < self.next_expected || self.early.contains_key(&seq) {
            return Received::Duplicate;
        }
        if seq >= self.next_expected.saturating_add(self.window(credit)) {
            return Received::BeyondCredit;
        }
        if seq > self.next_expected {
            self.early_bytes += payload.len();
            self.early.insert(seq, payload);
            return Received::Buffered;
        }
        let mut deliver = vec![(seq, payload)];
        self.next_expected += 1;
        while let Some(payload) = self.early.remove(&self.next_expected) {
            self.early_bytes -= payload.len();
            deliver.push((self.next_expected, payload));
            self.next_expected += 1;
        }
        self.unconsumed += deliver.len() as u64;
        Received::Deliver(deliver)
    }

    /// The credit to grant now: `credit` less what was delivered and not consumed.
    pub fn window(&self, credit: u64) -> u64 {
        credit.saturating_sub(self.unconsumed)
    }

    /// The application consumed one delivered message. True when the sender should
    /// hear of the wider window now: it opened by a quarter of `credit` since the last
    /// acknowledgement, or at all while the sender has used everything granted.
    pub fn consumed(&mut self, credit: u64) -> bool {
        self.unconsumed = self.unconsumed.saturating_sub(1);
        let limit = self.next_expected.saturating_add(self.window(credit));
        let exhausted = self.next_expected >= self.advertised_limit;
        limit > self.advertised_limit
            && (exhausted || limit >= self.advertised_limit.saturating_add(credit / 4))
    }

    /// The acknowledgement to send now, `(next_expected, credit)`; remembered as the
    /// limit granted.
    pub fn acknowledgement(&mut self, credit: u64) -> (u64, u64) {
        self.frames_since_ack = 0;
        let window = self.window(credit);
        self.advertised_limit = self
            .advertised_limit
            .max(self.next_expected.saturating_add(window));
        (self.next_expected, window)
    }

    /// Counts one more in-order data frame taken without an acknowledgement; returns
    /// how many there are now.
    pub fn owe_ack(&mut self) -> u32 {
        self.frames_since_ack = self.frames_since_ack.saturating_add(1);
        self.frames_since_ack
    }

    /// Whether data was taken since the last acknowledgement.
    pub fn owes_ack(&self) -> bool {
        self.frames_since_ack > 0
    }

    /// Bytes buffered ahead of a gap.
    pub fn early_bytes(&self) -> usize {
        self.early_bytes
    }

    /// A receiving half as a store kept it.
    pub fn restore(sender_incarnation: Option<u64>, next_expected: u64) -> Self {
        Self {
            next_expected,
            sender_incarnation,
            ..Self::default()
        }
    }

    /// The next sequence number expected (the cumulative acknowledgement).
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// The sender's incarnation of this channel, once a marker told it.
    pub fn sender_incarnation(&self) -> Option<u64> {
        self.sender_incarnation
    }

    /// Applies the sender's position from a Migrate marker. Returns true when it shows
    /// that one side lost its state, and the channel was resynchronised:
    /// - the sender's incarnation changed: it restarted and numbers the channel afresh;
    ///   follow it from its oldest unacknowledged message;
    /// - the sender holds nothing below `first_unacked` although we expect less: we
    ///   restarted (what we lack was acknowledged, so delivered, before); skip to it.
    ///
    /// A marker that is merely late (sent before messages we already have) changes
    /// nothing: its `next_seq` is behind us but its incarnation is the known one.
    pub fn resync(&mut self, incarnation: u64, first_unacked: u64) -> bool {
        let restarted_sender = self
            .sender_incarnation
            .is_some_and(|known| known != incarnation);
        self.sender_incarnation = Some(incarnation);
        if restarted_sender || first_unacked > self.next_expected {
            self.next_expected = first_unacked;
            // Retransmissions refill it; a stale entry at the new start would block.
            self.early.clear();
            self.early_bytes = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDIT: u64 = 4;
    const RTO: Duration = Duration::from_millis(100);

    fn seqs(batch: &[(u64, Vec<u8>)]) -> Vec<u64> {
        batch.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn a_resynchronised_channel_frees_the_bytes_it_held_ahead_of_a_gap() {
        let mut inbound = Inbound::default();
        assert!(matches!(
            inbound.receive(2, vec![0; 100], CREDIT),
            Received::Buffered
        ));
        assert!(matches!(
            inbound.receive(3, vec![0; 50], CREDIT),
            Received::Buffered
        ));
        assert_eq!(inbound.early_bytes(), 150);
        // The sender restarted (another incarnation): its old numbering is gone, and
        // what was held for it must not stay charged to the peer's receive budget.
        inbound.resync(1, 0);
        assert!(inbound.resync(2, 0));
        assert_eq!(inbound.early_bytes(), 0);
        assert!(matches!(
            inbound.receive(0, vec![0; 10], CREDIT),
            Received::Deliver(_)
        ));
    }

    #[test]
    fn sender_respects_credit_and_releases_on_ack() {
        let t0 = Instant::now();
        let mut out = Outbound::new(CREDIT, 1);
        for i in 0..6u8 {
            assert_eq!(out.push(vec![i]), u64::from(i));
        }
        assert_eq!(seqs(&out.due(t0, RTO, false)), [0, 1, 2, 3]);
        assert!(
            out.due(t0, RTO, false).is_empty(),
            "nothing new within credit"
        );
        assert_eq!(out.ack(2, CREDIT), 2);
        assert_eq!(seqs(&out.due(t0, RTO, false)), [4, 5]);
        assert_eq!(out.queued(), 4);
    }

    #[test]
    fn retransmits_after_rto_or_all_on_path_change() {
        let t0 = Instant::now();
        let mut out = Outbound::new(CREDIT, 1);
        out.push(vec![0]);
        out.push(vec![1]);
        out.due(t0, RTO, false);
        assert!(out.due(t0 + RTO / 2, RTO, false).is_empty());
        assert_eq!(out.next_retransmit(RTO), Some(t0 + RTO));
        assert_eq!(seqs(&out.due(t0 + RTO, RTO, false)), [0, 1]);
        assert_eq!(seqs(&out.due(t0 + RTO, RTO, true)), [0, 1]);
    }

    #[test]
    fn acks_never_move_backwards_nor_beyond_what_was_sent() {
        let mut out = Outbound::new(CREDIT, 1);
        out.push(vec![0]);
        out.push(vec![1]);
        assert_eq!(out.ack(5, CREDIT), 0, "ack beyond next_seq ignored");
        assert_eq!(out.queued(), 2);
        assert_eq!(out.ack(1, CREDIT), 1);
        assert_eq!(out.ack(0, CREDIT), 0);
        assert_eq!(out.queued(), 1);
    }

    #[test]
    fn resync_follows_a_side_that_lost_its_state_and_ignores_late_markers() {
        let mut inbound = Inbound::default();
        assert!(!inbound.resync(7, 0), "first marker of a fresh channel");
        for seq in 0..3 {
            inbound.receive(seq, vec![seq as u8], CREDIT);
        }
        // A late marker of the same run (sent when only 1 was acknowledged).
        assert!(!inbound.resync(7, 1));
        assert_eq!(inbound.next_expected(), 3);
        assert_eq!(inbound.receive(1, vec![1], CREDIT), Received::Duplicate);
        // The sender restarted: a new incarnation, counting from 0 again.
        assert!(inbound.resync(8, 0));
        assert_eq!(
            inbound.receive(0, vec![9], CREDIT),
            Received::Deliver(vec![(0, vec![9])])
        );
        // We restarted: the sender's oldest unacknowledged message is 57.
        let mut fresh = Inbound::default();
        assert!(fresh.resync(7, 57));
        assert_eq!(fresh.next_expected(), 57);
    }

    #[test]
    fn receiver_delivers_in_order_exactly_once() {
        let mut inbound = Inbound::default();
        assert_eq!(inbound.receive(1, vec![1], CREDIT), Received::Buffered);
        assert_eq!(inbound.receive(1, vec![1], CREDIT), Received::Duplicate);
        assert_eq!(inbound.receive(9, vec![9], CREDIT), Received::BeyondCredit);
        assert_eq!(
            inbound.receive(0, vec![0], CREDIT),
            Received::Deliver(vec![(0, vec![0]), (1, vec![1])])
        );
        assert_eq!(inbound.receive(0, vec![0], CREDIT), Received::Duplicate);
        assert_eq!(inbound.next_expected(), 2);
    }

    #[test]
    fn credit_follows_what_the_application_consumed() {
        let t0 = Instant::now();
        let mut out = Outbound::new(CREDIT, 1);
        let mut inbound = Inbound::default();
        for i in 0..10u8 {
            out.push(vec![i]);
        }
        for (seq, payload) in out.due(t0, RTO, false) {
            inbound.receive(seq, payload, CREDIT);
        }
        // Four delivered, none consumed: the window is shut.
        assert_eq!(inbound.acknowledgement(CREDIT), (4, 0));
        assert_eq!(out.ack(4, 0), 4);
        assert_eq!(
            inbound.receive(4, vec![4], CREDIT),
            Received::BeyondCredit,
            "beyond the window while nothing was consumed"
        );
        // Consuming one of four re-opens a shut window at once (the sender used all
        // it was granted).
        assert!(inbound.consumed(CREDIT));
        let (next_expected, credit) = inbound.acknowledgement(CREDIT);
        assert_eq!((next_expected, credit), (4, 1));
        out.ack(next_expected, credit);
        assert_eq!(seqs(&out.due(t0, RTO, false)), [4]);
    }

    #[test]
    fn a_sender_facing_a_shut_window_probes_once_every_rto() {
        let t0 = Instant::now();
        let mut out = Outbound::new(CREDIT, 1);
        for i in 0..6u8 {
            out.push(vec![i]);
        }
        assert_eq!(seqs(&out.due(t0, RTO, false)), [0, 1, 2, 3]);
        out.ack(4, 0);
        assert!(out.due(t0, RTO, false).is_empty(), "shut: nothing at once");
        assert_eq!(out.next_retransmit(RTO), Some(t0 + RTO));
        assert!(out.due(t0 + RTO / 2, RTO, false).is_empty());
        assert_eq!(seqs(&out.due(t0 + RTO, RTO, false)), [4], "one probe");
        assert!(out.due(t0 + RTO, RTO, false).is_empty());
        assert_eq!(out.next_retransmit(RTO), Some(t0 + 2 * RTO));
        // The probe's answer opens the window: the probe counts as sent, the next one
        // goes, and no more probes.
        out.ack(4, 2);
        assert_eq!(seqs(&out.due(t0 + RTO, RTO, false)), [5]);
        assert_eq!(out.next_retransmit(RTO), Some(t0 + 2 * RTO));
    }

    /// Any schedule of sends, losses, duplicates and reorderings delivers each message
    /// exactly once and in order once the sender has retransmitted enough.
    #[test]
    fn lossy_duplicating_reordering_path_delivers_exactly_once() {
        use rand::{Rng, SeedableRng};
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let t0 = Instant::now();
            let mut out = Outbound::new(CREDIT, 1);
            let mut inbound = Inbound::default();
            let total = 20u64;
            for i in 0..total {
                out.push(i.to_be_bytes().to_vec());
            }
            let mut delivered = Vec::new();
            let mut in_flight: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut now = t0;
            for _ in 0..2000 {
                now += Duration::from_millis(10);
                in_flight.extend(out.due(now, RTO, rng.gen_bool(0.05)));
                if in_flight.is_empty() {
                    continue;
                }
                let index = rng.gen_range(0..in_flight.len());
                let (seq, payload) = if rng.gen_bool(0.2) {
                    in_flight[index].clone()
                } else {
                    in_flight.swap_remove(index)
                };
                if rng.gen_bool(0.3) {
                    continue;
                }
                if let Received::Deliver(batch) = inbound.receive(seq, payload, CREDIT) {
                    delivered.extend(seqs(&batch));
                    for _ in &batch {
                        inbound.consumed(CREDIT);
                    }
                }
                let (next_expected, credit) = inbound.acknowledgement(CREDIT);
                out.ack(next_expected, credit);
                if out.queued() == 0 {
                    break;
                }
            }
            assert_eq!(delivered, (0..total).collect::<Vec<_>>(), "seed {seed}");
        }
    }
}
