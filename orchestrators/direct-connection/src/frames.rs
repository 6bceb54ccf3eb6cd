//! What the core does with each authenticated session frame: dispatch, and the
//! receiving half of the channels (in-order, exactly-once delivery and its acks).

use crate::channels::{Inbound, Received};
use crate::core::{DirectConnection, Output, MAX_INBOUND_CHANNELS};
use crate::state::Via;
use crate::timers::Timer;
use std::time::{Duration, Instant};

/// In-order data frames acknowledged together at most: an eighth of a channel's
/// default credit (256), so the sender's window reopens in small steps, while a burst
/// of small messages costs one acknowledgement per eight instead of one each (with
/// one each, acknowledgements were half the datagrams of a 1 KiB message stream and
/// most of its cost: `docs/benchmarks.md`, "Throughput").
pub const ACK_EVERY_FRAMES: u32 = 8;

/// Longest an in-order data frame waits for its acknowledgement: well under any
/// retransmission timeout (`Limits::rto`, 1 s) and a typical round trip, so a sender
/// learns of a lone message's arrival at most this much later.
pub const ACK_DELAY: Duration = Duration::from_millis(5);
use tether_protocol::{
    ChannelId, DeviceId, JournalEntry, MessageConsumed, MessageDelivered, MessagesAcknowledged,
    PeerReset, SendCapacity, SessionFrame,
};

impl DirectConnection {
    /// Dispatches one opened session frame from `device` that came over `via`.
    pub(crate) fn session_frame(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        frame: SessionFrame,
    ) {
        tracing::trace!(peer = %device, ?via, frame = frame_kind(&frame), "session frame");
        match frame {
            SessionFrame::Data {
                channel,
                seq,
                payload,
            } => self.data(now, device, via, channel, seq, payload),
            SessionFrame::Ack {
                channel,
                next_expected,
                credit,
            } => {
                // The new acknowledged point, when this ack released anything.
                let released_below = self
                    .peers
                    .get_mut(&device)
                    .and_then(|p| p.outbound.get_mut(&channel))
                    .and_then(|outbound| {
                        let released = outbound.ack(next_expected, credit);
                        (released > 0).then(|| (released, outbound.first_unacked()))
                    });
                let released_below = released_below.map(|(released, below)| {
                    if let Some(peer) = self.peers.get_mut(&device) {
                        peer.counters.acknowledged += released as u64;
                    }
                    below
                });
                if let Some(below) = released_below {
                    self.journal(JournalEntry::Acknowledged {
                        peer: device,
                        channel,
                        below,
                    });
                    self.outputs
                        .push_back(Output::Acknowledged(MessagesAcknowledged {
                            peer: device,
                            channel,
                            below,
                        }));
                    self.report_send_capacity(device);
                }
                self.pump(now, device);
            }
            SessionFrame::Ping { id } => {
                self.send_frame(device, via, &SessionFrame::Pong { id });
                if let Via::Link(link) = via {
                    self.tell_observed(now, device, link);
                }
            }
            SessionFrame::Pong { id } => self.pong(now, device, via, id),
            SessionFrame::ObservedAddress { addr } => {
                if let Via::Link(_) = via {
                    self.seen_by_peer(device, addr);
                }
            }
            SessionFrame::MigrationPing(ping) => {
                self.inbound_migration_ping(now, device, via, ping)
            }
            SessionFrame::MigrationAck(ack) => self.migration_ack(now, device, via, ack),
            SessionFrame::PathChallenge { data } => {
                self.send_frame(device, via, &SessionFrame::PathResponse { data });
            }
            SessionFrame::PathResponse { data } => {
                // A response binds what it validates (or is refused); it never starts a
                // challenge of its own: a refused one must not buy a new challenge, or
                // challenges and stale answers feed each other.
                self.path_response(now, device, via, data);
                return;
            }
            SessionFrame::Migrate {
                channel,
                incarnation,
                first_unacked,
                ..
            } => {
                // The sender switched paths (or epochs): line our position up with its
                // own, then tell it exactly where we are.
                if !self.inbound_channel_allowed(device, channel) {
                    return;
                }
                if let Some(peer) = self.peers.get_mut(&device) {
                    let resynced = peer
                        .inbound
                        .entry(channel)
                        .or_default()
                        .resync(incarnation, first_unacked);
                    if resynced {
                        peer.counters.resyncs += 1;
                    }
                    if resynced {
                        self.journal_received(device, channel, via);
                    }
                }
                self.ack_when_durable(device, via, channel);
            }
            SessionFrame::Padding { .. } => {}
            SessionFrame::Candidates { endpoints } => {
                self.candidates_received(now, device, endpoints);
            }
            SessionFrame::Reset { reason } => {
                self.outputs.push_back(Output::PeerReset(PeerReset {
                    peer: device,
                    reason,
                }));
            }
        }
        self.adopt_validated_path(now, device, via);
    }

    /// Whether a frame for `channel` may be taken: a known channel, or a new one within
    /// `MAX_INBOUND_CHANNELS` (beyond it the frame is dropped and counted, unacked).
    fn inbound_channel_allowed(&mut self, device: DeviceId, channel: ChannelId) -> bool {
        let Some(peer) = self.peers.get(&device) else {
            return false;
        };
        if peer.inbound.contains_key(&channel) || peer.inbound.len() < MAX_INBOUND_CHANNELS {
            return true;
        }
        self.counters.channels_refused += 1;
        false
    }

    fn data(
        &mut self,
        now: Instant,
        device: DeviceId,
        via: Via,
        channel: ChannelId,
        seq: u64,
        payload: Vec<u8>,
    ) {
        if !self.inbound_channel_allowed(device, channel) {
            return;
        }
        let credit = self.limits.credit;
        let budget = self.limits.receive_budget;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let held = peer.held_bytes();
        let inbound = peer.inbound.entry(channel).or_insert_with(Inbound::default);
        // The next expected message may use the whole budget; one ahead of a gap only
        // half, so what fills a gap always fits once the application has read.
        let room = if inbound.is_next(seq) {
            budget
        } else {
            budget / 2
        };
        let received = if held + payload.len() > room && seq >= inbound.next_expected() {
            self.counters.receive_budget_drops += 1;
            Received::BeyondCredit
        } else {
            inbound.receive(seq, payload, credit)
        };
        let in_order = matches!(received, Received::Deliver(_));
        match received {
            Received::Deliver(messages) => {
                for (seq, payload) in messages {
                    peer.counters.delivered += 1;
                    peer.unconsumed_bytes += payload.len();
                    self.outputs.push_back(Output::Delivered(MessageDelivered {
                        peer: device,
                        channel,
                        seq,
                        payload,
                    }));
                }
                self.journal_received(device, channel, via);
            }
            Received::Duplicate => peer.counters.duplicates += 1,
            Received::Buffered | Received::BeyondCredit => {}
        }
        if in_order {
            self.ack_soon(now, device, via, channel);
        } else {
            // A copy, a gap or a frame beyond the credit: the sender hears where this
            // side is at once.
            self.ack_when_durable(device, via, channel);
        }
    }

    /// Acknowledges in-order data with the [`ACK_EVERY_FRAMES`]th frame since the last
    /// acknowledgement, or [`ACK_DELAY`] after the first, whichever comes first: one
    /// acknowledgement (a sealed frame and a datagram each way) per burst of small
    /// messages instead of one each. Data whose journal entry waits for the store is
    /// acknowledged on the commit, as [`DirectConnection::ack_when_durable`] says.
    fn ack_soon(&mut self, now: Instant, device: DeviceId, via: Via, channel: ChannelId) {
        if self.awaiting_commit.contains_key(&(device, channel)) {
            self.ack_when_durable(device, via, channel);
            return;
        }
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(inbound) = peer.inbound.get_mut(&channel) else {
            return;
        };
        if inbound.owe_ack() >= ACK_EVERY_FRAMES {
            self.send_ack(device, via, channel);
            return;
        }
        peer.ack_via = Some(via);
        if !self.timers.is_armed(device, Timer::AckDelay) {
            self.timers.set(device, Timer::AckDelay, now + ACK_DELAY);
        }
    }

    /// `Timer::AckDelay` fired: every channel of `device` that took data since its last
    /// acknowledgement is acknowledged, on the path of the latest such frame.
    pub(crate) fn send_owed_acks(&mut self, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(via) = peer.ack_via.take() else {
            return;
        };
        let owed: Vec<ChannelId> = peer
            .inbound
            .iter()
            .filter(|(_, inbound)| inbound.owes_ack())
            .map(|(channel, _)| *channel)
            .collect();
        for channel in owed {
            self.ack_when_durable(device, via, channel);
        }
    }

    /// Acknowledges a channel's position, once it is durable: while the entry that
    /// records it waits for the store's commit, the ack waits too (on the path of the
    /// latest frame), so a sender never forgets a message that a crash of this device
    /// could make it deliver again.
    fn ack_when_durable(&mut self, device: DeviceId, via: Via, channel: ChannelId) {
        match self.awaiting_commit.get_mut(&(device, channel)) {
            Some((_, ack_via)) => *ack_via = via,
            None => self.send_ack(device, via, channel),
        }
    }

    /// The store committed the first `through` journal entries: the acks they held
    /// back go out.
    pub(crate) fn journal_committed(&mut self, through: u64) {
        let due: Vec<((DeviceId, ChannelId), Via)> = self
            .awaiting_commit
            .iter()
            .filter(|(_, (entry, _))| *entry <= through)
            .map(|(key, (_, via))| (*key, *via))
            .collect();
        for ((device, channel), via) in due {
            self.awaiting_commit.remove(&(device, channel));
            self.send_ack(device, via, channel);
        }
    }

    /// Tells the application, once, that a queue which refused a message has room.
    fn report_send_capacity(&mut self, device: DeviceId) {
        let max_queued = self.limits.max_queued;
        let max_queued_bytes = self.limits.max_queued_bytes;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        if peer.queue_full_refused
            && peer.queued() < max_queued
            && peer.queued_bytes() < max_queued_bytes
        {
            peer.queue_full_refused = false;
            self.outputs
                .push_back(Output::SendCapacity(SendCapacity { peer: device }));
        }
    }

    /// The application consumed a delivered message: its window and budget are free
    /// again. When that opens the window by a quarter of the credit, or at all while
    /// the sender has used all it was granted, the new window goes to the sender at once
    /// (its probes would find it within `rto` otherwise).
    pub(crate) fn consumed(&mut self, consumed: MessageConsumed) {
        let credit = self.limits.credit;
        let Some(peer) = self.peers.get_mut(&consumed.peer) else {
            return;
        };
        peer.unconsumed_bytes = peer.unconsumed_bytes.saturating_sub(consumed.len);
        let Some(inbound) = peer.inbound.get_mut(&consumed.channel) else {
            return;
        };
        let update = inbound.consumed(credit);
        let via = peer.bound.filter(|_| peer.usable());
        if let (true, Some(via)) = (update, via) {
            self.ack_when_durable(consumed.peer, via, consumed.channel);
        }
    }

    fn send_ack(&mut self, device: DeviceId, via: Via, channel: ChannelId) {
        let credit = self.limits.credit;
        let (next_expected, credit) = self
            .peers
            .get_mut(&device)
            .and_then(|p| p.inbound.get_mut(&channel))
            .map_or((0, credit), |inbound| inbound.acknowledgement(credit));
        self.send_frame(
            device,
            via,
            &SessionFrame::Ack {
                channel,
                next_expected,
                credit,
            },
        );
    }
}

fn frame_kind(frame: &SessionFrame) -> &'static str {
    match frame {
        SessionFrame::Data { .. } => "data",
        SessionFrame::Ack { .. } => "ack",
        SessionFrame::Ping { .. } => "ping",
        SessionFrame::Pong { .. } => "pong",
        SessionFrame::MigrationPing(_) => "migration-ping",
        SessionFrame::MigrationAck(_) => "migration-ack",
        SessionFrame::PathChallenge { .. } => "path-challenge",
        SessionFrame::PathResponse { .. } => "path-response",
        SessionFrame::Migrate { .. } => "migrate",
        SessionFrame::Padding { .. } => "padding",
        SessionFrame::Candidates { .. } => "candidates",
        SessionFrame::ObservedAddress { .. } => "observed-address",
        SessionFrame::Reset { .. } => "reset",
    }
}

impl DirectConnection {
    /// Records a change to a channel's durable state, when a store keeps them; returns
    /// the entry's number (entries are numbered from 1 in the order emitted).
    pub(crate) fn journal(&mut self, entry: JournalEntry) -> Option<u64> {
        if !self.journal {
            return None;
        }
        self.journal_emitted += 1;
        self.outputs.push_back(Output::Journal(entry));
        Some(self.journal_emitted)
    }

    /// Records where the receiving side of a channel stands; its ack waits for the
    /// commit.
    fn journal_received(&mut self, device: DeviceId, channel: ChannelId, via: Via) {
        let Some(inbound) = self
            .peers
            .get(&device)
            .and_then(|p| p.inbound.get(&channel))
        else {
            return;
        };
        let entry = JournalEntry::Received {
            peer: device,
            channel,
            sender_incarnation: inbound.sender_incarnation(),
            next_expected: inbound.next_expected(),
        };
        if let Some(number) = self.journal(entry) {
            self.awaiting_commit
                .insert((device, channel), (number, via));
        }
    }
}
