//! The transport driver: the actor that owns a device's QUIC endpoint and turns the
//! orchestrators' [`TransportCommand`]s into dials and frame writes, and links, frames
//! and address changes into [`TransportEvent`]s for whichever orchestrator owns the
//! link. It holds no domain logic: routing is by owner, nothing else.
//!
//! # Messages
//! - in: [`OwnedCommand`] (from the [`TransportPort`](tether_protocol::TransportPort) of
//!   DirectConnection or Rcs, which tags each command with its [`LinkOwner`] on
//!   the way, without an actor hop), [`Rebind`] (a network change), internal
//!   completions of dials, accepts and reads.
//! - out: [`TransportEvent`] to the link's owner, and before `LinkUp` the channel
//!   binding of a server link ([`LinkBound`]) to its owner; [`ConnectivityChanged`] after a
//!   rebind to Presence and DirectConnection; every busy link's `PathSampled` (QUIC's
//!   byte and loss counts, when [`PathSampler`] says: about every 5 s while frames keep
//!   coming, never on an idle link) to DirectConnection, which chooses paths.
//!
//! # Link lifecycle
//! Dialled (owner = requester) or accepted (owner = DirectConnection: only peers dial
//! a device) → a reader task forwards frames, and reports a changed remote address
//! before the frame that revealed it → a writer task sends frames in order → the link
//! ends (either task fails) and `LinkDown` goes to the owner once.

use crate::announce::announced_endpoints;
use crate::link_tasks::{forward_accepted, spawn_writer, Accepted, LinkWriter};
use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient, WrapFuture,
};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tether_protocol::{
    ConnectivityChanged, LinkBound, LinkId, LinkOwner, OwnedCommand, PathKind, RequestId,
    TransportCommand, TransportEvent,
};
use tether_transport::{dial_any, Endpoint, Link, LostReason, PathSampler};

/// The device changed networks: move the endpoint to `addr`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<SocketAddr, String>")]
pub struct Rebind {
    /// The new local address (port 0 picks one).
    pub addr: SocketAddr,
    /// The device's interface addresses now, announced in place of a wildcard `addr`
    /// (see [`announced_endpoints`]).
    pub interfaces: Vec<IpAddr>,
}

/// Where the driver's events go.
pub struct DriverRecipients {
    /// DirectConnection's link events.
    pub direct_connection: Recipient<TransportEvent>,
    /// Rcs's link events.
    pub rcs: Recipient<TransportEvent>,
    /// Rcs's server links' channel bindings.
    pub rcs_bindings: Recipient<LinkBound>,
    /// Network changes (Presence, DirectConnection).
    pub connectivity: Vec<Recipient<ConnectivityChanged>>,
}

impl DriverRecipients {
    fn of(&self, owner: LinkOwner) -> &Recipient<TransportEvent> {
        match owner {
            LinkOwner::DirectConnection => &self.direct_connection,
            LinkOwner::Rcs => &self.rcs,
        }
    }

    /// Who hears of a link's channel binding: the server link's owner (peers
    /// authenticate with Noise, which needs none).
    fn bindings_of(&self, owner: LinkOwner) -> Option<&Recipient<LinkBound>> {
        match owner {
            LinkOwner::DirectConnection => None,
            LinkOwner::Rcs => Some(&self.rcs_bindings),
        }
    }
}

struct DriverLink {
    owner: LinkOwner,
    writer: LinkWriter,
    handle: tether_transport::LinkHandle,
}

/// The transport driver actor. See the module docs.
pub struct TransportDriver {
    endpoint: Endpoint,
    /// What the device announces now (never a wildcard address).
    announced: Vec<SocketAddr>,
    recipients: DriverRecipients,
    links: BTreeMap<LinkId, DriverLink>,
    next_link: u64,
    /// Frames dropped because a link's writer queue was full.
    writes_dropped: Arc<AtomicU64>,
}

/// A link ended (its reader or writer stopped).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct LinkEnded {
    link: LinkId,
    reason: String,
}

impl TransportDriver {
    /// A driver for `endpoint`, which the device announces as `announced`; frames
    /// dropped at a full writer queue are counted in `writes_dropped`.
    pub fn new(
        endpoint: Endpoint,
        announced: Vec<SocketAddr>,
        recipients: DriverRecipients,
        writes_dropped: Arc<AtomicU64>,
    ) -> Self {
        Self {
            endpoint,
            announced,
            recipients,
            links: BTreeMap::new(),
            next_link: 1,
            writes_dropped,
        }
    }

    /// Registers a link, starts its reader and writer, and reports it up.
    fn register(
        &mut self,
        link: Link,
        owner: LinkOwner,
        request: Option<RequestId>,
        ctx: &mut Context<Self>,
    ) {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let remote = link.remote_addr();
        let handle = link.handle().clone();
        let binding = handle.channel_binding();
        let (sender, mut receiver) = link.split();
        let events = self.recipients.of(owner).clone();
        let me: Addr<Self> = ctx.address();

        // Reader: frames to the owner, a changed remote address first. Each frame is
        // handled before the next is read, so a busy owner leaves frames in QUIC, whose
        // flow control then holds the peer back: what a peer can make this node hold is
        // one frame per link, not whatever it sends.
        let reader_events = events.clone();
        let reader_me = me.clone();
        let samples = self.recipients.direct_connection.clone();
        let path = match owner {
            LinkOwner::DirectConnection => PathKind::Direct,
            LinkOwner::Rcs => PathKind::Relay,
        };
        tokio::spawn(async move {
            let mut last_remote = remote;
            let mut sampler = PathSampler::new(tokio::time::Instant::now().into_std());
            let reason = loop {
                match receiver.recv_frame().await {
                    Ok(Some(frame)) => {
                        if sampler.frame(|| tokio::time::Instant::now().into_std()) {
                            let stats = receiver.handle().path_stats();
                            samples.do_send(TransportEvent::PathSampled {
                                link: id,
                                path,
                                sent_bytes: stats.sent_bytes,
                                lost_bytes: stats.lost_bytes,
                            });
                        }
                        let now_remote = receiver.handle().remote_addr();
                        if now_remote != last_remote {
                            last_remote = now_remote;
                            reader_events.do_send(TransportEvent::RemoteChanged {
                                link: id,
                                remote: now_remote,
                            });
                        }
                        let handled = reader_events
                            .send(TransportEvent::FrameReceived {
                                link: id,
                                frame: frame.to_vec(),
                            })
                            .await;
                        if handled.is_err() {
                            break "the link's owner stopped".to_string();
                        }
                    }
                    Ok(None) => break "stream finished".to_string(),
                    Err(error) => break error.to_string(),
                }
            };
            // A farewell is the peer's last frame, carried in its close.
            if let Some(LostReason::Farewell { frame }) = receiver.handle().lost_reason() {
                reader_events.do_send(TransportEvent::FrameReceived { link: id, frame });
            }
            reader_me.do_send(LinkEnded { link: id, reason });
        });

        // Writer: frames in order; a failed send ends the link.
        let writer = spawn_writer(sender, self.writes_dropped.clone(), move |reason| {
            me.do_send(LinkEnded { link: id, reason });
        });

        self.links.insert(
            id,
            DriverLink {
                owner,
                writer,
                handle,
            },
        );
        // A server link's binding goes first, so its owner can answer the server's
        // challenge at once (it accepts the two in either order). A link whose TLS
        // cannot export (never once QUIC's handshake is done) gets none: its owner's
        // attempt times out and is retried.
        if let Some(bindings) = self.recipients.bindings_of(owner) {
            if let Some(binding) = binding {
                bindings.do_send(LinkBound { link: id, binding });
            }
        }
        events.do_send(TransportEvent::LinkUp {
            request,
            link: id,
            path: PathKind::Direct,
            remote: Some(remote),
        });
    }
}

impl Actor for TransportDriver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        forward_accepted(self.endpoint.clone(), ctx.address());
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.endpoint.close();
    }
}

impl Handler<Accepted> for TransportDriver {
    type Result = ();

    fn handle(&mut self, message: Accepted, ctx: &mut Self::Context) {
        self.register(message.0, LinkOwner::DirectConnection, None, ctx);
    }
}

impl Handler<LinkEnded> for TransportDriver {
    type Result = ();

    fn handle(&mut self, message: LinkEnded, _ctx: &mut Self::Context) {
        // Reader and writer may both report; the owner hears once.
        if let Some(link) = self.links.remove(&message.link) {
            link.handle.close();
            self.recipients
                .of(link.owner)
                .do_send(TransportEvent::LinkDown {
                    link: message.link,
                    reason: message.reason,
                });
        }
    }
}

impl Handler<OwnedCommand> for TransportDriver {
    type Result = ();

    fn handle(&mut self, message: OwnedCommand, ctx: &mut Self::Context) {
        match message.command {
            TransportCommand::Dial { request, addrs } => {
                let endpoint = self.endpoint.clone();
                let owner = message.owner;
                let dial = async move { dial_any(&endpoint, &addrs).await };
                ctx.spawn(dial.into_actor(self).map(move |result, actor, ctx| {
                    match result {
                        Ok(link) => actor.register(link, owner, Some(request), ctx),
                        Err(error) => {
                            actor
                                .recipients
                                .of(owner)
                                .do_send(TransportEvent::DialFailed {
                                    request,
                                    reason: error.to_string(),
                                })
                        }
                    }
                }));
            }
            TransportCommand::Transmit { link, frame } => {
                if let Some(state) = self.links.get(&link) {
                    // A closed writer means the link is ending; LinkDown follows.
                    let _ = state.writer.send(Bytes::from(frame));
                }
            }
            TransportCommand::Close { link } => {
                if let Some(state) = self.links.remove(&link) {
                    state.handle.close();
                }
            }
            TransportCommand::Farewell { link, frame } => {
                if let Some(state) = self.links.remove(&link) {
                    state.handle.close_with_farewell(&frame);
                }
            }
        }
    }
}

impl Handler<Rebind> for TransportDriver {
    type Result = Result<SocketAddr, String>;

    fn handle(&mut self, message: Rebind, _ctx: &mut Self::Context) -> Self::Result {
        let outcome = self
            .endpoint
            .rebind(message.addr)
            .map_err(|error| error.to_string())?;
        let announced = announced_endpoints(outcome.new, &message.interfaces);
        let change = ConnectivityChanged {
            old: std::mem::replace(&mut self.announced, announced.clone()),
            new: announced,
        };
        for recipient in &self.recipients.connectivity {
            recipient.do_send(change.clone());
        }
        Ok(outcome.new)
    }
}

tether_protocol::stops_on_shutdown!(TransportDriver);
