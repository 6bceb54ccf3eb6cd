//! The actix shell around [`RendezvousClient`]: feeds messages in with the runtime's
//! clock, forwards outputs to their recipients, and keeps one timer armed at the core's
//! next deadline. No protocol decision lives here.

use crate::client::{
    ClientInput, ClientOutput, RendezvousClient, RendezvousClientConfig, RendezvousClientCounters,
};
use actix::{Actor, Context, Handler, MessageResult, Recipient};
use tether_protocol::shell::{runtime_now, CoreShell, CoreTimer};
use tether_protocol::{
    LookupEndpointHint, PeerEndpointHint, PublishEndpointHint, RelayStatus, RendezvousFromServer,
    RendezvousToServer,
};

/// Where the Pms orchestrator's outputs go (wired by the harness).
pub struct Recipients {
    /// The relay client (Rcs), which sends requests on the device's server connection.
    pub to_server: Recipient<RendezvousToServer>,
    /// Everyone who wants the peer's endpoints (Presence and ConnectionBlueprint).
    pub hint: Vec<Recipient<PeerEndpointHint>>,
}

/// Asks the orchestrator for its client's counters (for the status command and tests).
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "RendezvousClientCounters")]
pub struct GetRendezvousClientCounters;

/// The Pms actor: the device's rendezvous client.
pub struct Orchestrator {
    core: RendezvousClient,
    recipients: Recipients,
    timer: CoreTimer,
}

impl Orchestrator {
    /// An actor around a fresh client; it publishes and looks up once the relay client
    /// reports the server connection up. The config's `unix_ms_at_start` must be the
    /// wall clock now.
    pub fn new(config: RendezvousClientConfig, recipients: Recipients) -> Self {
        Self {
            core: RendezvousClient::new(config, runtime_now()),
            recipients,
            timer: CoreTimer::default(),
        }
    }
}

impl CoreShell for Orchestrator {
    type Core = RendezvousClient;

    fn core(&mut self) -> &mut RendezvousClient {
        &mut self.core
    }

    fn timer(&mut self) -> &mut CoreTimer {
        &mut self.timer
    }

    fn route(&mut self, output: ClientOutput) {
        match output {
            ClientOutput::ToServer(m) => self.recipients.to_server.do_send(RendezvousToServer(m)),
            ClientOutput::Hint(m) => {
                for recipient in &self.recipients.hint {
                    recipient.do_send(m.clone());
                }
            }
        }
    }
}

impl Actor for Orchestrator {
    type Context = Context<Self>;
}

tether_protocol::feed_messages!(Orchestrator {
    PublishEndpointHint => ClientInput::Publish,
    LookupEndpointHint => ClientInput::Lookup,
    RelayStatus => ClientInput::Server,
});

impl Handler<RendezvousFromServer> for Orchestrator {
    type Result = ();
    fn handle(&mut self, message: RendezvousFromServer, ctx: &mut Self::Context) {
        self.feed(ClientInput::FromServer(message.0), ctx);
    }
}

impl Handler<GetRendezvousClientCounters> for Orchestrator {
    type Result = MessageResult<GetRendezvousClientCounters>;
    fn handle(&mut self, _: GetRendezvousClientCounters, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.counters())
    }
}

tether_protocol::stops_on_shutdown!(Orchestrator);
