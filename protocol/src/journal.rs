//! The channel journal: what DirectConnection records so that a stopped, killed or
//! powered-off device loses no message `send` accepted and delivers none twice.
//!
//! DirectConnection emits one [`JournalEntry`] for each change to a channel's durable
//! state, in the order it made them: a message accepted ([`JournalEntry::Accepted`]),
//! messages the peer acknowledged ([`JournalEntry::Acknowledged`]), the receiving
//! side's position ([`JournalEntry::Received`]). A store applies them in that order;
//! at the next start its [`RestoredChannels`] give DirectConnection back every channel
//! as it was, with the same incarnation, so neither side mistakes the restart for a
//! new run of the channel.

use crate::ids::{ChannelId, DeviceId};

/// Where channels are kept across restarts: a file in a production node, memory in the
/// simulator (kept across a simulated restart). `apply` is durable when it returns.
pub trait ChannelStore: Send {
    /// Everything kept, for DirectConnection at start.
    fn load(&self) -> Result<RestoredChannels, ChannelStoreError>;
    /// Applies entries in order, durably, all or none.
    fn apply(&mut self, entries: &[JournalEntry]) -> Result<(), ChannelStoreError>;
}

/// A store failed; the message names what and where, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChannelStoreError(pub String);

/// The memory store: the channels themselves.
impl ChannelStore for RestoredChannels {
    fn load(&self) -> Result<RestoredChannels, ChannelStoreError> {
        Ok(self.clone())
    }

    fn apply(&mut self, entries: &[JournalEntry]) -> Result<(), ChannelStoreError> {
        for entry in entries {
            self.apply_entry(entry.clone());
        }
        Ok(())
    }
}

/// One change to a channel's durable state (DirectConnection → the store).
#[derive(Debug, Clone, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub enum JournalEntry {
    /// `send` accepted a message (it must be durable before `send` returns).
    Accepted {
        /// The peer.
        peer: DeviceId,
        /// The channel.
        channel: ChannelId,
        /// The channel's incarnation on this device (fixed for its lifetime).
        incarnation: u64,
        /// The message's sequence number.
        seq: u64,
        /// Application bytes.
        payload: Vec<u8>,
    },
    /// The peer acknowledged every message of the channel below `below`.
    Acknowledged {
        /// The peer.
        peer: DeviceId,
        /// The channel.
        channel: ChannelId,
        /// Every sequence number below this was acknowledged.
        below: u64,
    },
    /// The receiving side of a channel moved on: delivered up to `next_expected`.
    Received {
        /// The peer (the sender).
        peer: DeviceId,
        /// The channel.
        channel: ChannelId,
        /// The sender's incarnation of the channel, once a marker told it.
        sender_incarnation: Option<u64>,
        /// The next sequence number expected.
        next_expected: u64,
    },
}

/// The store committed the first `through` journal entries DirectConnection emitted
/// (the writer → DirectConnection): the acks they held back may go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub struct JournalCommitted {
    /// Entries committed so far, counted from the node's start.
    pub through: u64,
}

/// The sending half of a channel as a store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredOutbound {
    /// The peer.
    pub peer: DeviceId,
    /// The channel.
    pub channel: ChannelId,
    /// The channel's incarnation (kept, so the peer sees the same run).
    pub incarnation: u64,
    /// The next sequence number to assign.
    pub next_seq: u64,
    /// Every sequence number below this was acknowledged.
    pub acked_below: u64,
    /// The messages accepted and not acknowledged, in sequence order.
    pub unacked: Vec<(u64, Vec<u8>)>,
}

impl RestoredOutbound {
    /// A channel with nothing sent yet.
    pub fn new(peer: DeviceId, channel: ChannelId, incarnation: u64) -> Self {
        Self {
            peer,
            channel,
            incarnation,
            next_seq: 0,
            acked_below: 0,
            unacked: Vec::new(),
        }
    }
}

/// The receiving half of a channel as a store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredInbound {
    /// The peer (the sender).
    pub peer: DeviceId,
    /// The channel.
    pub channel: ChannelId,
    /// The sender's incarnation, if known.
    pub sender_incarnation: Option<u64>,
    /// The next sequence number expected.
    pub next_expected: u64,
}

/// Every channel a store kept, for DirectConnection at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoredChannels {
    /// Sending halves.
    pub outbound: Vec<RestoredOutbound>,
    /// Receiving halves.
    pub inbound: Vec<RestoredInbound>,
}

impl RestoredChannels {
    /// Applies one entry, as a store does; the in-memory reference for every store.
    pub fn apply_entry(&mut self, entry: JournalEntry) {
        match entry {
            JournalEntry::Accepted {
                peer,
                channel,
                incarnation,
                seq,
                payload,
            } => {
                let outbound = self.outbound_mut(peer, channel, incarnation);
                if outbound.incarnation != incarnation {
                    // A new run of the channel replaces the old one.
                    *outbound = RestoredOutbound::new(peer, channel, incarnation);
                }
                if seq >= outbound.next_seq {
                    outbound.next_seq = seq + 1;
                    outbound.unacked.push((seq, payload));
                }
            }
            JournalEntry::Acknowledged {
                peer,
                channel,
                below,
            } => {
                if let Some(outbound) = self
                    .outbound
                    .iter_mut()
                    .find(|o| o.peer == peer && o.channel == channel)
                {
                    outbound.acked_below = outbound.acked_below.max(below);
                    outbound.unacked.retain(|(seq, _)| *seq >= below);
                }
            }
            JournalEntry::Received {
                peer,
                channel,
                sender_incarnation,
                next_expected,
            } => {
                let entry = RestoredInbound {
                    peer,
                    channel,
                    sender_incarnation,
                    next_expected,
                };
                match self
                    .inbound
                    .iter_mut()
                    .find(|i| i.peer == peer && i.channel == channel)
                {
                    Some(inbound) => *inbound = entry,
                    None => self.inbound.push(entry),
                }
            }
        }
    }

    fn outbound_mut(
        &mut self,
        peer: DeviceId,
        channel: ChannelId,
        incarnation: u64,
    ) -> &mut RestoredOutbound {
        let index = match self
            .outbound
            .iter()
            .position(|o| o.peer == peer && o.channel == channel)
        {
            Some(index) => index,
            None => {
                self.outbound
                    .push(RestoredOutbound::new(peer, channel, incarnation));
                self.outbound.len() - 1
            }
        };
        &mut self.outbound[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> DeviceId {
        DeviceId([3; 32])
    }

    fn accepted(seq: u64, incarnation: u64) -> JournalEntry {
        JournalEntry::Accepted {
            peer: peer(),
            channel: ChannelId(0),
            incarnation,
            seq,
            payload: vec![seq as u8],
        }
    }

    #[test]
    fn applying_the_journal_keeps_what_is_unacknowledged_and_where_receiving_stands() {
        let mut restored = RestoredChannels::default();
        for seq in 0..5 {
            restored.apply_entry(accepted(seq, 7));
        }
        restored.apply_entry(JournalEntry::Acknowledged {
            peer: peer(),
            channel: ChannelId(0),
            below: 3,
        });
        // An acknowledgement never moves back.
        restored.apply_entry(JournalEntry::Acknowledged {
            peer: peer(),
            channel: ChannelId(0),
            below: 1,
        });
        restored.apply_entry(JournalEntry::Received {
            peer: peer(),
            channel: ChannelId(2),
            sender_incarnation: Some(9),
            next_expected: 4,
        });
        assert_eq!(
            restored.outbound,
            vec![RestoredOutbound {
                peer: peer(),
                channel: ChannelId(0),
                incarnation: 7,
                next_seq: 5,
                acked_below: 3,
                unacked: vec![(3, vec![3]), (4, vec![4])],
            }]
        );
        assert_eq!(restored.inbound[0].next_expected, 4);
        // A new run of the channel (new incarnation) replaces the old one.
        restored.apply_entry(accepted(0, 8));
        assert_eq!(restored.outbound[0].incarnation, 8);
        assert_eq!(restored.outbound[0].unacked, vec![(0, vec![0])]);
    }
}
