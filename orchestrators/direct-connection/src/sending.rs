//! Sending: accepting application messages, putting due data on the bound path with its
//! retransmission timer, sealing frames within the anti-amplification budget, and the
//! liveness pings of the bound path.

use crate::channels::Outbound;
use crate::core::{duration_ms, DirectConnection, Output};
use crate::state::Via;
use crate::timers::Timer;
use std::collections::btree_map::Entry;
use std::time::Instant;
use tether_protocol::{
    ChannelId, DeviceId, Endpoint, JournalEntry, LivenessReport, PathMeasured, RelayForward,
    SealedFrame, SendBatchAnswer, SendError, SendMessage, SendMessages, SendRefused, SendWaiting,
    SessionFrame, TransportCommand, WireFrame,
};

/// Bytes a sealed frame adds to its plaintext (AEAD tag, ids, nonce, framing),
/// rounded up: used to check the anti-amplification budget before sealing.
const SEALED_OVERHEAD: u64 = 64;

impl DirectConnection {
    /// The application sends a message: accepted into the peer's queue (the sequence
    /// number it was given) and put on the wire if a path and credit allow, or refused
    /// with the reason. Answered at once, so the caller needs no reply message.
    pub fn send(&mut self, now: Instant, message: SendMessage) -> Result<u64, SendError> {
        self.send_or_refuse(now, message)
            .map_err(|refused| refused.error)
    }

    /// [`DirectConnection::send`] that hands a refused message's payload back.
    pub fn send_or_refuse(
        &mut self,
        now: Instant,
        message: SendMessage,
    ) -> Result<u64, SendRefused> {
        let device = message.peer;
        let result = self.accept_message(device, message.channel, message.payload);
        self.pump(now, device);
        if result.is_ok() {
            self.report_send_waiting(device);
        }
        result
    }

    /// Several messages for one peer and channel, in order: each accepted as
    /// [`DirectConnection::send`] accepts one, until one is refused (it and every later
    /// one are handed back); then one pump puts all that is due on the wire together.
    pub fn send_batch(&mut self, now: Instant, batch: SendMessages) -> SendBatchAnswer {
        let SendMessages {
            peer: device,
            channel,
            payloads,
        } = batch;
        let mut answer = SendBatchAnswer::default();
        let mut payloads = payloads.into_iter();
        while let Some(payload) = payloads.next() {
            match self.accept_message(device, channel, payload) {
                Ok(seq) => answer.accepted.push(seq),
                Err(SendRefused { error, payload }) => {
                    let mut handed_back = vec![payload];
                    handed_back.extend(payloads.by_ref());
                    answer.refused = Some((error, handed_back));
                }
            }
        }
        self.pump(now, device);
        if !answer.accepted.is_empty() {
            self.report_send_waiting(device);
        }
        answer
    }

    /// Tells Presence, once, that a message waits for a session that cannot carry it.
    fn report_send_waiting(&mut self, device: DeviceId) {
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let carried = peer.bound.is_some() && peer.usable();
        if carried || peer.send_waiting_reported {
            return;
        }
        peer.send_waiting_reported = true;
        self.outputs
            .push_back(Output::SendWaiting(SendWaiting { peer: device }));
    }

    fn accept_message(
        &mut self,
        device: DeviceId,
        channel: ChannelId,
        payload: Vec<u8>,
    ) -> Result<u64, SendRefused> {
        let credit = self.limits.credit;
        let max_queued = self.limits.max_queued;
        let max_queued_bytes = self.limits.max_queued_bytes;
        let max_len = self.limits.max_message_len;
        let refuse = |error, payload| Err(SendRefused { error, payload });
        let Some(peer) = self.peers.get_mut(&device) else {
            return refuse(SendError::UnknownPeer, payload);
        };
        if payload.len() > max_len {
            let error = SendError::TooLarge {
                len: payload.len(),
                max: max_len,
            };
            return refuse(error, payload);
        }
        if peer.queued() >= max_queued || peer.queued_bytes() + payload.len() > max_queued_bytes {
            peer.queue_full_refused = true;
            let error = SendError::QueueFull {
                messages: max_queued,
                bytes: max_queued_bytes,
            };
            return refuse(error, payload);
        }
        peer.counters.sent += 1;
        let outbound = match peer.outbound.entry(channel) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let incarnation = rand::RngCore::next_u64(&mut self.rng);
                entry.insert(Outbound::new(credit, incarnation))
            }
        };
        let journalled = self.journal.then(|| payload.clone());
        let seq = outbound.push(payload);
        let incarnation = outbound.incarnation();
        if let Some(payload) = journalled {
            self.journal(JournalEntry::Accepted {
                peer: device,
                channel,
                incarnation,
                seq,
                payload,
            });
        }
        Ok(seq)
    }

    /// Puts due data frames on the bound path and re-arms the retransmission timer.
    pub(crate) fn pump(&mut self, now: Instant, device: DeviceId) {
        let rto = self.limits.rto;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(via) = peer.bound.filter(|_| peer.usable()) else {
            self.timers.stop(device, Timer::Retransmit);
            return;
        };
        peer.send_waiting_reported = false;
        let resend_all = std::mem::take(&mut peer.resend_all);
        let mut frames = Vec::new();
        for (channel, outbound) in peer.outbound.iter_mut() {
            if outbound.take_announcement() {
                frames.push(SessionFrame::Migrate {
                    channel: *channel,
                    incarnation: outbound.incarnation(),
                    next_seq: outbound.next_seq(),
                    first_unacked: outbound.first_unacked(),
                });
            }
            for (seq, payload) in outbound.due(now, rto, resend_all) {
                frames.push(SessionFrame::Data {
                    channel: *channel,
                    seq,
                    payload,
                });
            }
        }
        let retransmit = peer
            .outbound
            .values()
            .filter_map(|channel| channel.next_retransmit(rto))
            .min();
        self.timers
            .set_or_stop(device, Timer::Retransmit, retransmit);
        for frame in frames {
            self.send_frame(device, via, &frame);
        }
    }

    /// Seals a session frame into an encoded wire frame, or None when no key is usable.
    pub(crate) fn seal_wire(&mut self, device: DeviceId, frame: &SessionFrame) -> Option<Vec<u8>> {
        let peer = self.peers.get_mut(&device)?;
        let plaintext = tether_protocol::encode_session(frame).ok()?;
        let sealed = peer.ring.seal(&plaintext).ok()?;
        tether_protocol::encode(&WireFrame::Sealed(SealedFrame {
            session: peer.session,
            key_id: sealed.key_id.0,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
        }))
        .ok()
    }

    /// Seals and sends a session frame on a path, within the anti-amplification budget
    /// of an unvalidated address (a frame beyond it is dropped and counted).
    pub(crate) fn send_frame(&mut self, device: DeviceId, via: Via, frame: &SessionFrame) {
        if let Via::Link(link) = via {
            match self.links.budget_allows(link, estimated_len(frame)) {
                None => return,
                Some(false) => {
                    self.counters.amplification_blocked += 1;
                    return;
                }
                Some(true) => {}
            }
        }
        let Some(bytes) = self.seal_wire(device, frame) else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(&device) {
            peer.counters.traffic(via).sent(bytes.len() as u64);
            match frame {
                SessionFrame::Data { .. } => peer.counters.data_frames_sent += 1,
                SessionFrame::Ack { .. } => peer.counters.acks_sent += 1,
                _ => {}
            }
        }
        self.deliver_bytes(device, via, bytes);
    }

    /// Sends an unsealed wire frame (handshake messages).
    pub(crate) fn deliver_wire(&mut self, device: DeviceId, via: Via, frame: &WireFrame) {
        match tether_protocol::encode(frame) {
            Ok(bytes) => self.deliver_bytes(device, via, bytes),
            Err(error) => tracing::warn!(%error, "cannot encode a handshake frame"),
        }
    }

    fn deliver_bytes(&mut self, device: DeviceId, via: Via, bytes: Vec<u8>) {
        match via {
            Via::Link(link) => {
                self.links.record_sent(link, bytes.len() as u64);
                self.outputs
                    .push_back(Output::Transport(TransportCommand::Transmit {
                        link,
                        frame: bytes,
                    }));
            }
            Via::Relay => self.outputs.push_back(Output::RelayForward(RelayForward {
                to: device,
                frame: bytes,
            })),
        }
    }

    /// A liveness ping on the bound path; after enough misses in a row, Presence hears
    /// that the path is dead.
    pub(crate) fn heartbeat(&mut self, now: Instant, device: DeviceId) {
        let missed_limit = self.limits.missed_heartbeats;
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let Some(via) = peer.bound else {
            return;
        };
        let beat = &mut peer.heartbeat;
        let missed = beat.newest_unanswered();
        if missed {
            beat.missed += 1;
        }
        let report_dead = beat.missed >= missed_limit && !beat.reported_dead;
        if report_dead {
            beat.reported_dead = true;
        }
        beat.next_id += 1;
        let id = beat.next_id;
        beat.sent(id, now, missed_limit);
        let rtt_ms = beat.srtt_ms;
        self.timers.set(
            device,
            Timer::Heartbeat,
            now + self.limits.heartbeat_interval,
        );
        if report_dead {
            self.outputs.push_back(Output::Liveness(LivenessReport {
                peer: device,
                alive: false,
                rtt_ms,
            }));
        }
        self.send_frame(device, via, &SessionFrame::Ping { id });
        self.direct_heartbeat(now, device, missed);
    }

    /// The answer to a liveness ping: an RTT sample, and news of a path back alive.
    pub(crate) fn pong(&mut self, now: Instant, device: DeviceId, via: Via, id: u64) {
        if crate::operator_ping::is_operator_ping(id) {
            self.operator_ping_answered(now, device, via, id);
            return;
        }
        if crate::path_choice::is_relay_probe(id) {
            self.relay_probe_answered(now, device, via, id);
            return;
        }
        let Some(peer) = self.peers.get_mut(&device) else {
            return;
        };
        let beat = &mut peer.heartbeat;
        let Some(sent_at) = beat.answered(id) else {
            return;
        };
        beat.missed = 0;
        let elapsed = now.saturating_duration_since(sent_at);
        let sample = duration_ms(elapsed);
        let srtt = beat.srtt_ms.map_or(sample, |srtt| (srtt * 7 + sample) / 8);
        beat.srtt_ms = Some(srtt);
        let was_dead = std::mem::take(&mut beat.reported_dead);
        if was_dead {
            self.outputs.push_back(Output::Liveness(LivenessReport {
                peer: device,
                alive: true,
                rtt_ms: Some(srtt),
            }));
        }
        match via {
            Via::Relay => self.relay_rtt_sample(device, elapsed),
            Via::Link(_) => self.direct_rtt_sample(device, sample),
        }
        let endpoint = match via {
            Via::Link(link) => self.links.remote(link).map(Endpoint::Direct),
            Via::Relay => Some(Endpoint::Relay),
        };
        if let Some(endpoint) = endpoint {
            self.outputs.push_back(Output::PathMeasured(PathMeasured {
                peer: device,
                endpoint,
                rtt_ms: Some(sample),
                srtt_ms: Some(srtt),
            }));
        }
    }
}

fn estimated_len(frame: &SessionFrame) -> u64 {
    let plaintext = tether_protocol::encode_session(frame).map_or(0, |b| b.len() as u64);
    plaintext + SEALED_OVERHEAD
}
