//! The actix shell around [`DirectConnection`]: feeds messages in with the runtime's
//! clock, forwards outputs, and keeps one timer armed at the core's next deadline.

use crate::config::Config;
use crate::core::{Counters, DirectConnection, Input, Output, PeerSnapshot};
use crate::operator_ping::{PingAnswered, PingRefused, PingSent};
use actix::{Actor, Context, Handler, MessageResult, Recipient};
use std::collections::BTreeMap;
use tether_protocol::shell::{runtime_now, CoreShell, CoreTimer};
use tether_protocol::{
    AllowRekey, BlueprintCompiled, CarryOverRelay, ConnectFailed, ConnectPeer, ConnectivityChanged,
    DeviceId, DirectDialFailed, EvictSession, HandshakeStarted, InboundMigrationPing,
    JournalCommitted, JournalEntry, LivenessReport, MessageConsumed, MessageDelivered,
    MessagesAcknowledged, PathLost, PathMeasured, PeerAnnounced, PeerEndpointHint,
    PeerEndpointsChanged, PeerReset, ReflexiveAddress, RelayDelivered, RelayEnqueue, RelayForward,
    RelayMigrationPing, RelayStatus, SendCapacity, SendMessage, SendMessages, SendMigrationPing,
    SendWaiting, SessionReady, TransportEvent, TransportPort,
};
use tokio::sync::oneshot;

/// Where DirectConnection's outputs go.
pub struct Recipients {
    /// The transport driver.
    pub transport: TransportPort,
    /// Rcs.
    pub relay_forward: Recipient<RelayForward>,
    /// Rcs.
    pub relay_enqueue: Recipient<RelayEnqueue>,
    /// Presence.
    pub handshake_started: Recipient<HandshakeStarted>,
    /// Presence, ConnectionBlueprint, the node.
    pub session_ready: Vec<Recipient<SessionReady>>,
    /// Presence.
    pub connect_failed: Recipient<ConnectFailed>,
    /// Presence.
    pub inbound_migration_ping: Recipient<InboundMigrationPing>,
    /// Presence.
    pub path_lost: Recipient<PathLost>,
    /// Presence.
    pub peer_reset: Recipient<PeerReset>,
    /// Presence.
    pub liveness: Recipient<LivenessReport>,
    /// ConnectionBlueprint, Presence.
    pub path_measured: Vec<Recipient<PathMeasured>>,
    /// Presence.
    pub direct_dial_failed: Recipient<DirectDialFailed>,
    /// ConnectionBlueprint.
    pub peer_announced: Recipient<PeerAnnounced>,
    /// Presence.
    pub peer_endpoints_changed: Recipient<PeerEndpointsChanged>,
    /// Presence.
    pub send_waiting: Recipient<SendWaiting>,
    /// The store that keeps channels across restarts (journalling only).
    pub journal: Recipient<JournalEntry>,
    /// The application.
    pub delivered: Recipient<MessageDelivered>,
    /// The application: a full queue has room again.
    pub send_capacity: Recipient<SendCapacity>,
    /// The application: the peer acknowledged messages.
    pub acknowledged: Recipient<MessagesAcknowledged>,
}

/// Asks for every peer's status and the drop counters (answered directly: only the
/// node, never another actor, awaits it).
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "(Vec<PeerSnapshot>, Counters)")]
pub struct GetPeerSnapshots;

/// Sends an operator ping (`tether ping`) to a peer, answered directly (only the
/// node awaits it): the ping on its way and where its answer will arrive, or why it
/// was not sent. The answer's sender is dropped, unanswered, when newer pings displace
/// it (see [`crate::MAX_PINGS_PER_PEER`]).
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "Result<PingReply, PingRefused>")]
pub struct PingPeer {
    /// The peer.
    pub peer: DeviceId,
}

/// An operator ping on its way, and where its answer arrives.
#[derive(Debug)]
pub struct PingReply {
    /// The ping.
    pub sent: PingSent,
    /// Its answer, when it comes.
    pub answer: oneshot::Receiver<PingAnswered>,
}

/// The DirectConnection actor.
pub struct Orchestrator {
    core: DirectConnection,
    recipients: Recipients,
    timer: CoreTimer,
    /// Whoever waits for each operator ping's answer.
    pings: BTreeMap<(DeviceId, u64), oneshot::Sender<PingAnswered>>,
}

impl Orchestrator {
    /// An actor around a fresh core.
    pub fn new(config: Config, recipients: Recipients) -> Self {
        Self {
            core: DirectConnection::new(config, runtime_now()),
            recipients,
            timer: CoreTimer::default(),
            pings: BTreeMap::new(),
        }
    }
}

impl CoreShell for Orchestrator {
    type Core = DirectConnection;

    fn core(&mut self) -> &mut DirectConnection {
        &mut self.core
    }

    fn timer(&mut self) -> &mut CoreTimer {
        &mut self.timer
    }

    fn route(&mut self, output: Output) {
        let r = &self.recipients;
        match output {
            Output::Transport(m) => r.transport.do_send(m),
            Output::RelayForward(m) => r.relay_forward.do_send(m),
            Output::RelayEnqueue(m) => r.relay_enqueue.do_send(m),
            Output::HandshakeStarted(m) => r.handshake_started.do_send(m),
            Output::SessionReady(m) => {
                for recipient in &r.session_ready {
                    recipient.do_send(m.clone());
                }
            }
            Output::ConnectFailed(m) => r.connect_failed.do_send(m),
            Output::InboundMigrationPing(m) => r.inbound_migration_ping.do_send(m),
            Output::PathLost(m) => r.path_lost.do_send(m),
            Output::PeerReset(m) => r.peer_reset.do_send(m),
            Output::Liveness(m) => r.liveness.do_send(m),
            Output::PathMeasured(m) => {
                for recipient in &r.path_measured {
                    recipient.do_send(m.clone());
                }
            }
            Output::DirectDialFailed(m) => r.direct_dial_failed.do_send(m),
            Output::PeerAnnounced(m) => r.peer_announced.do_send(m),
            Output::PeerEndpointsChanged(m) => r.peer_endpoints_changed.do_send(m),
            Output::SendWaiting(m) => r.send_waiting.do_send(m),
            Output::Journal(m) => r.journal.do_send(m),
            Output::Delivered(m) => r.delivered.do_send(m),
            Output::SendCapacity(m) => r.send_capacity.do_send(m),
            Output::Acknowledged(m) => r.acknowledged.do_send(m),
            Output::PingAnswered(answer) => {
                if let Some(waiting) = self.pings.remove(&(answer.peer, answer.id)) {
                    let _ = waiting.send(answer);
                }
            }
            Output::PingExpired { peer, id } => {
                self.pings.remove(&(peer, id));
            }
        }
    }
}

impl Actor for Orchestrator {
    type Context = Context<Self>;
}

tether_protocol::feed_messages!(Orchestrator {
    ConnectPeer => Input::Connect,
    SendMigrationPing => Input::SendMigrationPing,
    RelayMigrationPing => Input::RelayMigrationPing,
    CarryOverRelay => Input::CarryOverRelay,
    EvictSession => Input::Evict,
    AllowRekey => Input::AllowRekey,
    TransportEvent => Input::Transport,
    RelayDelivered => Input::Relay,
    RelayStatus => Input::RelayStatus,
    BlueprintCompiled => Input::Blueprint,
    JournalCommitted => Input::JournalCommitted,
    PeerEndpointHint => Input::Hint,
    MessageConsumed => Input::Consumed,
    ReflexiveAddress => Input::Reflexive,
});

impl Handler<ConnectivityChanged> for Orchestrator {
    type Result = ();

    fn handle(&mut self, change: ConnectivityChanged, ctx: &mut Self::Context) {
        self.feed(Input::LocalEndpoints(change.new), ctx);
    }
}

/// This device is stopping: say goodbye to every peer with a usable session (answered
/// directly with how many were told, once the farewells are on their way to the
/// transport driver; only the node awaits it).
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "usize")]
pub struct CloseSessions;

impl Handler<CloseSessions> for Orchestrator {
    type Result = usize;

    fn handle(&mut self, _: CloseSessions, ctx: &mut Self::Context) -> usize {
        let told = self.core.close_sessions();
        self.drain(ctx);
        told
    }
}

impl Handler<SendMessage> for Orchestrator {
    type Result = MessageResult<SendMessage>;

    fn handle(&mut self, message: SendMessage, ctx: &mut Self::Context) -> Self::Result {
        let result = self.core.send_or_refuse(runtime_now(), message);
        self.drain(ctx);
        MessageResult(result)
    }
}

impl Handler<SendMessages> for Orchestrator {
    type Result = MessageResult<SendMessages>;

    fn handle(&mut self, batch: SendMessages, ctx: &mut Self::Context) -> Self::Result {
        let answer = self.core.send_batch(runtime_now(), batch);
        self.drain(ctx);
        MessageResult(answer)
    }
}

impl Handler<GetPeerSnapshots> for Orchestrator {
    type Result = MessageResult<GetPeerSnapshots>;

    fn handle(&mut self, _message: GetPeerSnapshots, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult((self.core.snapshots(), self.core.counters()))
    }
}

impl Handler<PingPeer> for Orchestrator {
    type Result = Result<PingReply, PingRefused>;

    fn handle(&mut self, message: PingPeer, ctx: &mut Self::Context) -> Self::Result {
        let sent = self.core.operator_ping(runtime_now(), message.peer);
        let reply = sent.map(|sent| {
            let (waiting, answer) = oneshot::channel();
            self.pings.insert((message.peer, sent.id), waiting);
            PingReply { sent, answer }
        });
        self.drain(ctx);
        reply
    }
}

tether_protocol::stops_on_shutdown!(Orchestrator);
