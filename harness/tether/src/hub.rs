//! The node's event hub: the actor that receives what the orchestrators report to "the
//! node" and turns it into one ordered stream of [`NodeEvent`]s, and remembers each
//! peer's status for `status()`. (A `send` is answered by DirectConnection itself.)
//!
//! # Messages
//! - in: `StatusChanged` (Presence), `MigrationEvent` (Presence),
//!   `SessionReady`, `MessageDelivered`, `SendCapacity` (DirectConnection), and
//!   [`GetPresence`] (the node).
//! - out: [`NodeEvent`]s on the node's channel; a wake-up of the sends waiting for a
//!   full queue.
//!
//! # Bounds
//! The event channel holds what the application has not read yet. Deliveries in it are
//! bounded by DirectConnection's receive budget (their credit returns only when the
//! application takes them). Every other event is a notice of a state change; at most
//! [`MAX_PENDING_NOTICES`] wait at once, and beyond that new ones are dropped and
//! counted ([`EventBacklog::notices_dropped`]): an application that stops reading loses
//! notices (the current state stays readable through `status()`), never messages.

use actix::{Actor, Context, Handler, Message, MessageResult};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_presence::MigrationEvent;
use tether_protocol::{
    ChannelId, DeviceId, MessageDelivered, MessagesAcknowledged, SendCapacity, SessionReady,
    SessionStatus, StatusChanged,
};
use tokio::sync::{mpsc, Notify};

/// Notices (events other than deliveries) that may wait unread at once: thousands of
/// state changes, far more than any burst of migrations produces, and a few hundred
/// KiB at most.
pub const MAX_PENDING_NOTICES: usize = 4096;

/// What the hub and the node share about the event channel and waiting sends.
#[derive(Debug, Default)]
pub struct EventBacklog {
    /// Notices sent and not yet read.
    pending_notices: AtomicUsize,
    /// Notices dropped because [`MAX_PENDING_NOTICES`] were unread.
    notices_dropped: AtomicU64,
    /// Wakes the sends that wait for room in a full queue.
    capacity: Notify,
    /// Set when the node stops: waiting sends give up.
    stopped: AtomicBool,
}

impl EventBacklog {
    /// Notices dropped because the application did not read them.
    pub fn notices_dropped(&self) -> u64 {
        self.notices_dropped.load(Ordering::Relaxed)
    }

    /// The application read `event`.
    pub(crate) fn read(&self, event: &NodeEvent) {
        if !matches!(event, NodeEvent::Delivered { .. }) {
            self.pending_notices.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The wake-up of sends waiting for capacity.
    pub(crate) fn capacity(&self) -> &Notify {
        &self.capacity
    }

    /// Whether the node stopped.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The node stops: waiting sends wake and give up.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.capacity.notify_waiters();
    }
}

/// Something that happened on the node, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A peer's session status changed.
    Status {
        /// The peer.
        peer: DeviceId,
        /// Previous status.
        from: Option<SessionStatus>,
        /// New status.
        to: SessionStatus,
    },
    /// A session was bound to a path.
    Ready(SessionReady),
    /// A migration began (Presence's [`MigrationEvent::Started`]).
    MigrationStarted {
        /// The peer.
        peer: DeviceId,
        /// Whether this device moved.
        outbound: bool,
    },
    /// A migration ended in eviction (Presence's [`MigrationEvent::Failed`]).
    MigrationFailed {
        /// The peer.
        peer: DeviceId,
        /// Whether this device moved.
        outbound: bool,
        /// From the change (or the signal) to the eviction.
        duration: Duration,
    },
    /// A migration finished.
    MigrationCompleted {
        /// The peer.
        peer: DeviceId,
        /// Whether this device moved.
        outbound: bool,
        /// From the change (or the signal) to Ready.
        duration: Duration,
    },
    /// The peer acknowledged every message of `channel` below `below` (it has them;
    /// with a store, durably): they will not be sent again.
    Acknowledged {
        /// The peer.
        peer: DeviceId,
        /// The channel.
        channel: ChannelId,
        /// Every sequence number below this is acknowledged.
        below: u64,
    },
    /// A message from a peer reached the application.
    Delivered {
        /// Sender.
        peer: DeviceId,
        /// Channel.
        channel: ChannelId,
        /// Sequence number in the channel.
        seq: u64,
        /// Bytes.
        payload: Vec<u8>,
    },
}

/// The phase timeline of several devices' event logs: one line per event since `since`
/// (`   105ms A: B ReconnectingOutbound -> Ready`), in time order, devices in the given
/// order at equal times; peers are named by `name`. Deliveries are left out.
pub fn phase_timeline<'a>(
    logs: impl IntoIterator<Item = (&'a str, &'a [(Duration, NodeEvent)])>,
    name: impl Fn(&DeviceId) -> String,
    since: Duration,
) -> String {
    let mut lines: Vec<(Duration, usize, String)> = Vec::new();
    for (i, (device, log)) in logs.into_iter().enumerate() {
        for (order, (at, event)) in log.iter().enumerate() {
            if *at < since {
                continue;
            }
            let text = match event {
                NodeEvent::Status { peer, from, to } => format!(
                    "{device}: {} {} -> {to}",
                    name(peer),
                    from.map_or("-".to_string(), |s| s.to_string()),
                ),
                NodeEvent::Ready(ready) => format!(
                    "{device}: {} ready e{} {:?}{}",
                    name(&ready.peer),
                    ready.epoch.0,
                    ready.path,
                    if ready.rekey {
                        " (rekey)"
                    } else if ready.after_handshake {
                        " (handshake)"
                    } else {
                        ""
                    }
                ),
                NodeEvent::MigrationCompleted { peer, outbound, .. } => format!(
                    "{device}: {} migration complete ({})",
                    name(peer),
                    if *outbound { "moved" } else { "peer moved" }
                ),
                // The status lines already show a migration start and an eviction.
                NodeEvent::MigrationStarted { .. }
                | NodeEvent::MigrationFailed { .. }
                | NodeEvent::Acknowledged { .. }
                | NodeEvent::Delivered { .. } => continue,
            };
            lines.push((*at - since, i * 1_000_000 + order, text));
        }
    }
    lines.sort();
    lines
        .into_iter()
        .map(|(at, _, text)| format!("{:>7}ms {text}", at.as_millis()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the hub knows per peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceView {
    /// Current status.
    pub status: Option<SessionStatus>,
    /// Duration of the last completed migration.
    pub last_migration: Option<Duration>,
    /// Migrations completed.
    pub migrations: u64,
}

/// Asks for every peer's [`PresenceView`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "BTreeMap<DeviceId, PresenceView>")]
pub struct GetPresence;

/// The hub actor.
pub struct EventHub {
    events: mpsc::UnboundedSender<NodeEvent>,
    backlog: Arc<EventBacklog>,
    peers: BTreeMap<DeviceId, PresenceView>,
}

impl EventHub {
    /// A hub writing to `events`, sharing `backlog` with the reader.
    pub fn new(events: mpsc::UnboundedSender<NodeEvent>, backlog: Arc<EventBacklog>) -> Self {
        Self {
            events,
            backlog,
            peers: BTreeMap::new(),
        }
    }

    fn emit(&self, event: NodeEvent) {
        if !matches!(event, NodeEvent::Delivered { .. }) {
            let pending = &self.backlog.pending_notices;
            if pending.load(Ordering::Relaxed) >= MAX_PENDING_NOTICES {
                self.backlog.notices_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pending.fetch_add(1, Ordering::Relaxed);
        }
        // A node whose owner dropped the receiver has no one to tell.
        let _ = self.events.send(event);
    }
}

impl Actor for EventHub {
    type Context = Context<Self>;
}

impl Handler<StatusChanged> for EventHub {
    type Result = ();

    fn handle(&mut self, message: StatusChanged, _ctx: &mut Self::Context) {
        self.peers.entry(message.peer).or_default().status = Some(message.to);
        self.emit(NodeEvent::Status {
            peer: message.peer,
            from: message.from,
            to: message.to,
        });
    }
}

impl Handler<MigrationEvent> for EventHub {
    type Result = ();

    fn handle(&mut self, message: MigrationEvent, _ctx: &mut Self::Context) {
        let event = match message {
            MigrationEvent::Started { peer, outbound } => {
                NodeEvent::MigrationStarted { peer, outbound }
            }
            MigrationEvent::Completed {
                peer,
                outbound,
                duration,
            } => {
                let view = self.peers.entry(peer).or_default();
                view.last_migration = Some(duration);
                view.migrations += 1;
                NodeEvent::MigrationCompleted {
                    peer,
                    outbound,
                    duration,
                }
            }
            MigrationEvent::Failed {
                peer,
                outbound,
                duration,
            } => NodeEvent::MigrationFailed {
                peer,
                outbound,
                duration,
            },
        };
        self.emit(event);
    }
}

impl Handler<SessionReady> for EventHub {
    type Result = ();

    fn handle(&mut self, message: SessionReady, _ctx: &mut Self::Context) {
        self.emit(NodeEvent::Ready(message));
    }
}

impl Handler<MessageDelivered> for EventHub {
    type Result = ();

    fn handle(&mut self, message: MessageDelivered, _ctx: &mut Self::Context) {
        self.emit(NodeEvent::Delivered {
            peer: message.peer,
            channel: message.channel,
            seq: message.seq,
            payload: message.payload,
        });
    }
}

impl Handler<MessagesAcknowledged> for EventHub {
    type Result = ();

    fn handle(&mut self, message: MessagesAcknowledged, _ctx: &mut Self::Context) {
        self.emit(NodeEvent::Acknowledged {
            peer: message.peer,
            channel: message.channel,
            below: message.below,
        });
    }
}

impl Handler<SendCapacity> for EventHub {
    type Result = ();

    fn handle(&mut self, _message: SendCapacity, _ctx: &mut Self::Context) {
        self.backlog.capacity.notify_waiters();
    }
}

impl Handler<GetPresence> for EventHub {
    type Result = MessageResult<GetPresence>;

    fn handle(&mut self, _message: GetPresence, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.peers.clone())
    }
}
