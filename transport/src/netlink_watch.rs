//! The Linux source of interface events: one rtnetlink socket subscribed to address and
//! link changes, after a dump of the current links and addresses. Unlike address
//! events alone, it reports which interface each address is on and whether that
//! interface can carry traffic (administratively up, with carrier), so an interface
//! that goes down while keeping its address stops counting.

use std::io;
use std::pin::Pin;

use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket, SocketAddr, TokioSocket};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
use tokio::task::AbortHandle;

use crate::connectivity::InterfaceEvent;

type Messages = Pin<Box<dyn Stream<Item = io::Result<RouteNetlinkMessage>> + Send>>;

/// Interface events from rtnetlink: the current links and addresses first, then every
/// change. Stops its connection task when dropped.
pub(crate) struct NetlinkSource {
    messages: Messages,
    pending: std::collections::VecDeque<InterfaceEvent>,
    connection: AbortHandle,
}

impl NetlinkSource {
    /// Opens the socket, subscribes, and queues the dump of links and addresses.
    pub(crate) fn new() -> io::Result<Self> {
        let (mut connection, handle, messages) =
            rtnetlink::new_connection_with_socket::<TokioSocket>()?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))?;
        let connection = tokio::spawn(connection).abort_handle();
        let links = handle
            .link()
            .get()
            .execute()
            .map_ok(RouteNetlinkMessage::NewLink)
            .map_err(io::Error::other);
        // The kernel runs one dump per socket at a time: the addresses are asked for
        // only once the links are in.
        let addresses = futures_util::stream::once(async move {
            handle
                .address()
                .get()
                .execute()
                .map_ok(RouteNetlinkMessage::NewAddress)
                .map_err(io::Error::other)
        })
        .flatten();
        let changes = messages.filter_map(|(message, _)| async {
            match message.payload {
                NetlinkPayload::Error(error) => Some(Err(error.to_io())),
                NetlinkPayload::InnerMessage(message) => Some(Ok(message)),
                _ => None,
            }
        });
        Ok(Self {
            messages: links.chain(addresses).chain(changes).boxed(),
            pending: std::collections::VecDeque::new(),
            connection,
        })
    }

    /// The next interface event. An error (the socket closed) ends the watch.
    pub(crate) async fn next(&mut self) -> io::Result<InterfaceEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let message =
                self.messages.next().await.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "rtnetlink closed")
                })??;
            self.pending.extend(events_of(message));
        }
    }
}

impl Drop for NetlinkSource {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// What one rtnetlink message says about links and addresses.
fn events_of(message: RouteNetlinkMessage) -> Vec<InterfaceEvent> {
    match message {
        RouteNetlinkMessage::NewLink(link) => vec![link_state(&link)],
        RouteNetlinkMessage::DelLink(link) => vec![InterfaceEvent::LinkGone {
            index: link.header.index,
        }],
        RouteNetlinkMessage::NewAddress(address) => addresses_of(address)
            .map(|(ip, index)| InterfaceEvent::AddressOn { ip, index })
            .collect(),
        RouteNetlinkMessage::DelAddress(address) => addresses_of(address)
            .map(|(ip, _)| InterfaceEvent::Down(ip))
            .collect(),
        _ => Vec::new(),
    }
}

/// A link carries traffic when it is administratively up and has carrier.
fn link_state(link: &LinkMessage) -> InterfaceEvent {
    let flags = link.header.flags;
    InterfaceEvent::Link {
        index: link.header.index,
        carrier: flags.contains(LinkFlags::Up)
            && (flags.contains(LinkFlags::Running) || flags.contains(LinkFlags::LowerUp)),
    }
}

fn addresses_of(message: AddressMessage) -> impl Iterator<Item = (std::net::IpAddr, u32)> {
    let index = message.header.index;
    message
        .attributes
        .into_iter()
        .filter_map(move |attribute| match attribute {
            AddressAttribute::Address(ip) => Some((ip, index)),
            _ => None,
        })
}
