//! The actix shell around [`Presence`]: feeds messages in with the runtime's clock,
//! forwards outputs, and keeps one timer armed at the core's next deadline.

use crate::config::Config;
use crate::core::{Input, MigrationEvent, Output, Presence};
use actix::{Actor, Context, Recipient};
use std::net::SocketAddr;
use tether_protocol::shell::{runtime_now, CoreShell, CoreTimer, SansIoCore};
use tether_protocol::{
    AllowRekey, CarryOverRelay, ConnectFailed, ConnectPeer, ConnectivityChanged, DeviceId,
    DirectDialFailed, EvictSession, HandshakeStarted, InboundMigrationPing, LivenessReport,
    LookupEndpointHint, PathLost, PathMeasured, PeerEndpointsChanged, PeerReset,
    PublishEndpointHint, ReflexiveAddress, RelayMigrationPing, RelayPoll, SendMigrationPing,
    SendWaiting, SessionReady, StatusChanged,
};

/// Where Presence's outputs go.
pub struct Recipients {
    /// DirectConnection.
    pub connect: Recipient<ConnectPeer>,
    /// DirectConnection.
    pub migration_ping: Recipient<SendMigrationPing>,
    /// DirectConnection.
    pub relay_migration_ping: Recipient<RelayMigrationPing>,
    /// DirectConnection.
    pub carry_over_relay: Recipient<CarryOverRelay>,
    /// DirectConnection.
    pub evict: Recipient<EvictSession>,
    /// DirectConnection: whether a rekey may run.
    pub allow_rekey: Recipient<AllowRekey>,
    /// Pms.
    pub publish_hint: Recipient<PublishEndpointHint>,
    /// Pms.
    pub lookup_hint: Recipient<LookupEndpointHint>,
    /// Rcs.
    pub relay_poll: Recipient<RelayPoll>,
    /// The node's event stream.
    pub status: Recipient<StatusChanged>,
    /// The node's event stream.
    pub migration: Recipient<MigrationEvent>,
}

/// The Presence actor.
pub struct Orchestrator {
    core: Presence,
    recipients: Recipients,
    timer: CoreTimer,
}

impl Orchestrator {
    /// An actor around a fresh core, with its peers and the device's endpoints.
    pub fn new(
        config: Config,
        rng_seed: [u8; 32],
        peers: Vec<DeviceId>,
        local_endpoints: Vec<SocketAddr>,
        recipients: Recipients,
    ) -> Self {
        let now = runtime_now();
        let mut core = Presence::new(config, rng_seed, now);
        core.handle(now, Input::LocalEndpoints(local_endpoints));
        for peer in peers {
            core.handle(now, Input::AddPeer(peer));
        }
        Self {
            core,
            recipients,
            timer: CoreTimer::default(),
        }
    }
}

impl CoreShell for Orchestrator {
    type Core = Presence;

    fn core(&mut self) -> &mut Presence {
        &mut self.core
    }

    fn timer(&mut self) -> &mut CoreTimer {
        &mut self.timer
    }

    fn route(&mut self, output: Output) {
        let r = &self.recipients;
        match output {
            Output::ConnectPeer(m) => r.connect.do_send(m),
            Output::SendMigrationPing(m) => r.migration_ping.do_send(m),
            Output::RelayMigrationPing(m) => r.relay_migration_ping.do_send(m),
            Output::CarryOverRelay(m) => r.carry_over_relay.do_send(m),
            Output::EvictSession(m) => r.evict.do_send(m),
            Output::AllowRekey(m) => r.allow_rekey.do_send(m),
            Output::PublishEndpointHint(m) => r.publish_hint.do_send(m),
            Output::LookupEndpointHint(m) => r.lookup_hint.do_send(m),
            Output::RelayPoll(m) => r.relay_poll.do_send(m),
            Output::StatusChanged(m) => r.status.do_send(m),
            Output::Migration(m) => r.migration.do_send(m),
        }
    }
}

impl Actor for Orchestrator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.drain(ctx);
    }
}

tether_protocol::feed_messages!(Orchestrator {
    ConnectivityChanged => Input::ConnectivityChanged,
    HandshakeStarted => Input::HandshakeStarted,
    SessionReady => Input::SessionReady,
    ConnectFailed => Input::ConnectFailed,
    InboundMigrationPing => Input::InboundMigrationPing,
    PathLost => Input::PathLost,
    PeerReset => Input::PeerReset,
    LivenessReport => Input::Liveness,
    PeerEndpointsChanged => Input::PeerEndpointsChanged,
    PathMeasured => Input::PathMeasured,
    DirectDialFailed => Input::DirectDialFailed,
    SendWaiting => Input::SendWaiting,
    ReflexiveAddress => Input::Reflexive,
});

tether_protocol::stops_on_shutdown!(Orchestrator);
