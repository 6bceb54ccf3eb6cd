//! The relay and rendezvous server: a QUIC endpoint in front of the relay queue logic
//! (`tether_rcs::RelayQueueServer`) and the rendezvous table (`tether_pms`). It runs on
//! any transport (real UDP or the simulated network). Connections authenticate with the
//! relay protocol's challenge; rendezvous requests are served only on an authenticated
//! connection, on behalf of the device it proved to be.
//!
//! # Messages
//! - in: accepted links, frames read from them, link ends, timer ticks,
//!   [`GetServerCounters`].
//! - out: frames written to links; link closes.

use crate::link_tasks::{forward_accepted, spawn_writer, Accepted};
use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tether_crypto::{PublicKey, StaticKeypair};
use tether_pms::RendezvousTable;
use tether_protocol::shell::{runtime_now, CoreTimer};
use tether_protocol::{RendezvousMessage, ServerRefusal, WireFrame};
use tether_rcs::{
    ConnId, RelayQueueServer, RelayServerConfig, RelayServerCounters, ServerInput, ServerOutput,
};
use tether_transport::{Endpoint, LinkHandle};
use tokio::sync::mpsc;

/// The server actor. See the module docs.
pub struct RelayServer {
    endpoint: Endpoint,
    queue: RelayQueueServer,
    table: RendezvousTable,
    conns: BTreeMap<ConnId, ServerConn>,
    next_conn: u64,
    timer: CoreTimer,
    /// Every frame received from devices, when an audit asked for it.
    tap: Option<Vec<Vec<u8>>>,
}

/// Starts recording every frame the server receives (for tests that audit what a
/// server can see, invariant 7).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StartTap;

/// The frames recorded since [`StartTap`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<Vec<u8>>")]
pub struct GetTap;

struct ServerConn {
    writer: mpsc::UnboundedSender<Bytes>,
    handle: LinkHandle,
}

/// A handle to a running server.
pub struct RelayServerHandle {
    /// The actor.
    pub addr: actix::Addr<RelayServer>,
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// Its public key (devices are configured with it).
    pub public: PublicKey,
}

/// Asks for the server's counters.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RelayServerCounters")]
pub struct GetServerCounters;

#[derive(Message)]
#[rtype(result = "()")]
struct ConnBytes(ConnId, Bytes);

#[derive(Message)]
#[rtype(result = "()")]
struct ConnEnded(ConnId);

impl RelayServer {
    /// Starts a server on `endpoint` with its static keypair; `seed` seeds the
    /// challenge RNG (use OS entropy in production).
    pub fn start(
        endpoint: Endpoint,
        keypair: StaticKeypair,
        seed: [u8; 32],
    ) -> std::io::Result<RelayServerHandle> {
        let local_addr = endpoint.local_addr()?;
        let public = *keypair.public();
        let queue = RelayQueueServer::new(RelayServerConfig::new(keypair, seed), runtime_now());
        let table = RendezvousTable::new(Default::default(), runtime_now());
        let addr = RelayServer {
            endpoint,
            queue,
            table,
            conns: BTreeMap::new(),
            next_conn: 1,
            timer: CoreTimer::default(),
            tap: None,
        }
        .start();
        Ok(RelayServerHandle {
            addr,
            local_addr,
            public,
        })
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(output) = self.queue.poll_output() {
            match output {
                ServerOutput::Send(conn, frame) => self.send(conn, &frame),
                ServerOutput::Close(conn) => {
                    if let Some(state) = self.conns.remove(&conn) {
                        state.handle.close();
                    }
                }
            }
        }
        let next = [self.queue.poll_timeout(), self.table.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        self.timer.rearm(ctx, next, |server, ctx| {
            server.queue.handle_timeout(runtime_now());
            server.table.handle_timeout(runtime_now());
            server.drain(ctx);
        });
    }

    fn send(&mut self, conn: ConnId, frame: &WireFrame) {
        let Some(state) = self.conns.get(&conn) else {
            return;
        };
        if let Ok(bytes) = tether_protocol::encode(frame) {
            let _ = state.writer.send(Bytes::from(bytes));
        }
    }
}

impl Actor for RelayServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        forward_accepted(self.endpoint.clone(), ctx.address());
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.endpoint.close();
    }
}

impl Handler<Accepted> for RelayServer {
    type Result = ();

    fn handle(&mut self, message: Accepted, ctx: &mut Self::Context) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let handle = message.0.handle().clone();
        let (sender, mut receiver) = message.0.split();
        let me = ctx.address();
        let reader_me = me.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = receiver.recv_frame().await {
                reader_me.do_send(ConnBytes(conn, frame));
            }
            reader_me.do_send(ConnEnded(conn));
        });
        let writer = spawn_writer(sender, move |_| me.do_send(ConnEnded(conn)));
        self.conns.insert(conn, ServerConn { writer, handle });
        self.queue.handle(runtime_now(), ServerInput::Opened(conn));
        self.drain(ctx);
    }
}

impl Handler<ConnBytes> for RelayServer {
    type Result = ();

    fn handle(&mut self, ConnBytes(conn, bytes): ConnBytes, ctx: &mut Self::Context) {
        if let Some(tap) = self.tap.as_mut() {
            tap.push(bytes.to_vec());
        }
        match tether_protocol::decode(&bytes) {
            Ok(WireFrame::Relay(message)) => {
                self.queue
                    .handle(runtime_now(), ServerInput::Frame(conn, message));
            }
            Ok(WireFrame::Rendezvous(message)) => {
                let answer = match self.queue.authenticated_device(conn) {
                    Some(device) => self.table.handle(runtime_now(), device, message),
                    None => Some(RendezvousMessage::Refused {
                        reason: ServerRefusal::NotAuthenticated,
                    }),
                };
                if let Some(answer) = answer {
                    self.send(conn, &WireFrame::Rendezvous(answer));
                }
            }
            // Anything else (peer frames, garbage) is counted by the queue server.
            Ok(_) | Err(_) => {
                self.queue
                    .handle(runtime_now(), ServerInput::Bytes(conn, bytes.to_vec()));
            }
        }
        self.drain(ctx);
    }
}

impl Handler<ConnEnded> for RelayServer {
    type Result = ();

    fn handle(&mut self, ConnEnded(conn): ConnEnded, ctx: &mut Self::Context) {
        if let Some(state) = self.conns.remove(&conn) {
            state.handle.close();
            self.queue.handle(runtime_now(), ServerInput::Closed(conn));
            self.drain(ctx);
        }
    }
}

impl Handler<StartTap> for RelayServer {
    type Result = ();

    fn handle(&mut self, _message: StartTap, _ctx: &mut Self::Context) {
        self.tap.get_or_insert_with(Vec::new);
    }
}

impl Handler<GetTap> for RelayServer {
    type Result = MessageResult<GetTap>;

    fn handle(&mut self, _message: GetTap, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.tap.clone().unwrap_or_default())
    }
}

impl Handler<GetServerCounters> for RelayServer {
    type Result = MessageResult<GetServerCounters>;

    fn handle(&mut self, _message: GetServerCounters, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.queue.counters())
    }
}

tether_protocol::stops_on_shutdown!(RelayServer);
