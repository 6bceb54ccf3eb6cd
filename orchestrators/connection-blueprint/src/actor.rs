//! The actix shell around [`ConnectionBlueprint`]: feeds messages in with the runtime's
//! clock and forwards outputs. No policy lives here.

use crate::core::{BlueprintConfig, ConnectionBlueprint, Input, Output};
use actix::{Actor, Context, Recipient};
use tether_protocol::shell::{runtime_now, CoreShell, CoreTimer};
use tether_protocol::{
    BlueprintCompiled, PathMeasured, PeerEndpointHint, RecompileBlueprint, SessionReady,
};

/// Where the orchestrator's outputs go.
pub struct BlueprintRecipients {
    /// Presence receives compiled blueprints.
    pub compiled: Recipient<BlueprintCompiled>,
}

/// The ConnectionBlueprint actor.
pub struct ConnectionBlueprintOrchestrator {
    core: ConnectionBlueprint,
    recipients: BlueprintRecipients,
    /// Never armed (the core sets no timers); the shared shell loop expects one.
    timer: CoreTimer,
}

impl ConnectionBlueprintOrchestrator {
    /// An actor around a fresh core.
    pub fn new(config: BlueprintConfig, recipients: BlueprintRecipients) -> Self {
        Self {
            core: ConnectionBlueprint::new(config, runtime_now()),
            recipients,
            timer: CoreTimer::default(),
        }
    }
}

impl CoreShell for ConnectionBlueprintOrchestrator {
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

impl Actor for ConnectionBlueprintOrchestrator {
    type Context = Context<Self>;
}

/// Registers a peer's configured addresses.
#[derive(Debug, Clone, actix::Message)]
#[rtype(result = "()")]
pub struct AddBlueprintPeer(pub Input);

tether_protocol::feed_messages!(ConnectionBlueprintOrchestrator {
    RecompileBlueprint => Input::Recompile,
    PathMeasured => Input::Measured,
    PeerEndpointHint => Input::Hint,
    SessionReady => Input::Ready,
    AddBlueprintPeer => |message: AddBlueprintPeer| message.0,
});

tether_protocol::stops_on_shutdown!(ConnectionBlueprintOrchestrator);
