//! The actix shell around [`ConnectionBlueprint`]: feeds messages in with the runtime's
//! clock and forwards outputs. No policy lives here.

use crate::core::{Config, ConnectionBlueprint, Input, Output};
use actix::{Actor, Context, Recipient};
use std::net::SocketAddr;
use tether_protocol::shell::{runtime_now, CoreShell, CoreTimer};
use tether_protocol::{BlueprintCompiled, DeviceId, PathMeasured, PeerAnnounced, SessionReady};

/// Where the orchestrator's outputs go.
pub struct Recipients {
    /// DirectConnection receives each peer's candidate order when it changes.
    pub compiled: Recipient<BlueprintCompiled>,
}

/// The ConnectionBlueprint actor.
pub struct Orchestrator {
    core: ConnectionBlueprint,
    recipients: Recipients,
    /// Armed at the moment the next fresh address goes stale.
    timer: CoreTimer,
}

impl Orchestrator {
    /// An actor around a fresh core.
    pub fn new(config: Config, recipients: Recipients) -> Self {
        Self {
            core: ConnectionBlueprint::new(config, runtime_now()),
            recipients,
            timer: CoreTimer::default(),
        }
    }
}

impl CoreShell for Orchestrator {
    type Core = ConnectionBlueprint;

    fn core(&mut self) -> &mut ConnectionBlueprint {
        &mut self.core
    }

    fn timer(&mut self) -> &mut CoreTimer {
        &mut self.timer
    }

    fn route(&mut self, output: Output) {
        match output {
            Output::Compiled(message) => self.recipients.compiled.do_send(message),
        }
    }
}

impl Actor for Orchestrator {
    type Context = Context<Self>;
}

/// Registers a paired peer and the addresses its config lists (the node, at start).
#[derive(Debug, Clone, PartialEq, Eq, actix::Message)]
#[rtype(result = "()")]
pub struct AddPeer {
    /// The peer.
    pub peer: DeviceId,
    /// Its configured addresses, best first.
    pub configured: Vec<SocketAddr>,
}

tether_protocol::feed_messages!(Orchestrator {
    PeerAnnounced => Input::Announced,
    PathMeasured => Input::Measured,
    SessionReady => Input::Ready,
    AddPeer => |AddPeer { peer, configured }| Input::AddPeer { peer, configured },
});

tether_protocol::stops_on_shutdown!(Orchestrator);
