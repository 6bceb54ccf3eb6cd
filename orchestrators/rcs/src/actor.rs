//! The actix shell around [`RelayClient`]: feeds messages in with the runtime's clock,
//! forwards outputs to their recipients, and keeps one timer armed at the core's next
//! deadline. No protocol decision lives here.

use crate::client::{
    ClientInput, ClientOutput, RelayClient, RelayClientConfig, RelayClientCounters,
};
use actix::{Actor, AsyncContext, Context, Handler, MessageResult, Recipient};
use tether_protocol::shell::{runtime_now, CoreShell, CoreTimer};
use tether_protocol::{
    ConnectivityChanged, LinkBound, RelayDelivered, RelayEnqueue, RelayEnqueueResult, RelayForward,
    RelayPoll, RelayStatus, RendezvousFromServer, RendezvousToServer, TransportEvent,
    TransportPort,
};

/// Where the Rcs orchestrator's outputs go (wired by the harness).
pub struct Recipients {
    /// The transport driver: dials, frames and closes of the server link.
    pub transport: TransportPort,
    /// DirectConnection: envelopes and frames that arrived through the relay.
    pub delivered: Recipient<RelayDelivered>,
    /// DirectConnection: answers to its enqueue requests.
    pub enqueue_result: Recipient<RelayEnqueueResult>,
    /// Whoever tracks the server connection (DirectConnection for the relay path, Pms
    /// for rendezvous).
    pub status: Vec<Recipient<RelayStatus>>,
    /// Pms: the server's rendezvous answers.
    pub rendezvous: Recipient<RendezvousFromServer>,
}

/// Asks the orchestrator for its client's counters (for the status command and tests).
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "RelayClientCounters")]
pub struct GetRelayClientCounters;

/// The Rcs actor: the device's relay client.
pub struct Orchestrator {
    core: RelayClient,
    recipients: Recipients,
    timer: CoreTimer,
}

impl Orchestrator {
    /// An actor around a fresh client; it dials the server when started.
    pub fn new(config: RelayClientConfig, recipients: Recipients) -> Self {
        Self {
            core: RelayClient::new(config, runtime_now()),
            recipients,
            timer: CoreTimer::default(),
        }
    }
}

impl CoreShell for Orchestrator {
    type Core = RelayClient;

    fn core(&mut self) -> &mut RelayClient {
        &mut self.core
    }

    fn timer(&mut self) -> &mut CoreTimer {
        &mut self.timer
    }

    /// What arrived through the relay is handed to DirectConnection and waited for
    /// before this actor handles anything more: the relay link's reader then waits in
    /// turn, and QUIC's flow control holds the relay back, so frames from the relay
    /// cannot pile up in DirectConnection's mailbox faster than it handles them.
    fn route_in(&mut self, output: ClientOutput, ctx: &mut Context<Self>) {
        match output {
            ClientOutput::Delivered(m) => {
                let handled = self.recipients.delivered.send(m);
                ctx.wait(actix::fut::wrap_future(async move {
                    // A stopped DirectConnection means the node is stopping.
                    let _ = handled.await;
                }));
            }
            other => self.route(other),
        }
    }

    fn route(&mut self, output: ClientOutput) {
        let r = &self.recipients;
        match output {
            ClientOutput::Transport(m) => r.transport.do_send(m),
            ClientOutput::Delivered(m) => r.delivered.do_send(m),
            ClientOutput::EnqueueResult(m) => r.enqueue_result.do_send(m),
            ClientOutput::Status(m) => {
                for recipient in &r.status {
                    recipient.do_send(m.clone());
                }
            }
            ClientOutput::Rendezvous(m) => r.rendezvous.do_send(RendezvousFromServer(m)),
        }
    }
}

impl Actor for Orchestrator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.feed(ClientInput::Start, ctx);
    }
}

tether_protocol::feed_messages!(Orchestrator {
    RelayEnqueue => ClientInput::Enqueue,
    RelayForward => ClientInput::Forward,
    RelayPoll => ClientInput::Poll,
    TransportEvent => ClientInput::Transport,
    LinkBound => ClientInput::Bound,
});

impl Handler<ConnectivityChanged> for Orchestrator {
    type Result = ();
    fn handle(&mut self, _message: ConnectivityChanged, ctx: &mut Self::Context) {
        self.feed(ClientInput::Moved, ctx);
    }
}

impl Handler<RendezvousToServer> for Orchestrator {
    type Result = ();
    fn handle(&mut self, message: RendezvousToServer, ctx: &mut Self::Context) {
        self.feed(ClientInput::Rendezvous(message.0), ctx);
    }
}

impl Handler<GetRelayClientCounters> for Orchestrator {
    type Result = MessageResult<GetRelayClientCounters>;
    fn handle(&mut self, _: GetRelayClientCounters, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.core.counters())
    }
}

tether_protocol::stops_on_shutdown!(Orchestrator);
