//! The node's event hub: the actor that receives what the orchestrators report to "the
//! node" and turns it into one ordered stream of [`NodeEvent`]s, and remembers each
//! peer's status for `status()`. (A `send` is answered by DirectConnection itself.)
//!
//! # Messages
//! - in: `StatusChanged` (Presence), `MigrationEvent` (Presence),
//!   `SessionReady`, `MessageDelivered` (DirectConnection), and [`GetPresence`] (the
//!   node).
//! - out: [`NodeEvent`]s on the node's channel.

use actix::{Actor, Context, Handler, Message, MessageResult};
use std::collections::BTreeMap;
use std::time::Duration;
use tether_presence::MigrationEvent;
use tether_protocol::{
    ChannelId, DeviceId, MessageDelivered, SessionReady, SessionStatus, StatusChanged,
};
use tokio::sync::mpsc;

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
    peers: BTreeMap<DeviceId, PresenceView>,
}

impl EventHub {
    /// A hub writing to `events`.
    pub fn new(events: mpsc::UnboundedSender<NodeEvent>) -> Self {
        Self {
            events,
            peers: BTreeMap::new(),
        }
    }

    fn emit(&self, event: NodeEvent) {
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

impl Handler<GetPresence> for EventHub {
    type Result = MessageResult<GetPresence>;

    fn handle(&mut self, _message: GetPresence, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.peers.clone())
    }
}
