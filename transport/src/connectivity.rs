//! Connectivity detection: tells the session layer that this device's local addresses
//! changed (WiFi to mobile data, a new IP, an interface gone), as a
//! [`ConnectivityChanged`] with the old and new addresses.
//!
//! Two sources feed one [`ConnectivityEvents`] stream:
//! - [`InterfaceWatcher`], for real devices: watches the OS's interface addresses and,
//!   on Linux, the state of their links (rtnetlink: an interface that goes down or loses
//!   carrier stops counting even while it keeps its address; elsewhere addresses only,
//!   via the `if-watch` crate), and debounces bursts of changes into one event;
//! - [`ConnectivityTrigger`], the manual trigger: tests, the simulated network, and
//!   loopback setups (rebind to 127.0.0.2) report changes themselves.
//!
//! Detection only reports; moving the endpoint is the caller's decision
//! ([`Endpoint::rebind`](crate::Endpoint::rebind)).

use std::collections::{BTreeMap, BTreeSet};
#[cfg(not(target_os = "linux"))]
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

pub use tether_protocol::messages::ConnectivityChanged;

use crate::endpoint::RebindOutcome;
use crate::sync::lock;

/// A new pair of connected trigger and event stream.
pub fn channel() -> (ConnectivityTrigger, ConnectivityEvents) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ConnectivityTrigger { tx }, ConnectivityEvents { rx })
}

/// Reports connectivity changes by hand (and is what the watcher uses internally).
#[derive(Debug, Clone)]
pub struct ConnectivityTrigger {
    tx: mpsc::UnboundedSender<ConnectivityChanged>,
}

impl ConnectivityTrigger {
    /// Emits a change; returns false if nobody listens any more.
    pub fn notify(&self, old: Vec<SocketAddr>, new: Vec<SocketAddr>) -> bool {
        self.tx.send(ConnectivityChanged { old, new }).is_ok()
    }

    /// Emits the change an [`Endpoint::rebind`](crate::Endpoint::rebind) made.
    pub fn rebound(&self, outcome: &RebindOutcome) -> bool {
        self.notify(vec![outcome.old], vec![outcome.new])
    }
}

/// The stream of connectivity changes the session layer consumes.
#[derive(Debug)]
pub struct ConnectivityEvents {
    rx: mpsc::UnboundedReceiver<ConnectivityChanged>,
}

impl ConnectivityEvents {
    /// The next change; `None` when every trigger and watcher is gone.
    pub async fn next(&mut self) -> Option<ConnectivityChanged> {
        self.rx.recv().await
    }
}

/// How long interface events must be quiet before they are reported as one change
/// ([`WatchOptions::debounce`]'s default, what `tether node` and a library node that
/// watches interfaces use): a network switch arrives as several netlink messages
/// within a few milliseconds; 250 ms folds them into one event and is still far below
/// a migration's time budget. A change goes unnoticed for at least this long.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(250);

/// Which local addresses count, and how changes are batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Port put on every reported address (the endpoint's port; 0 if unknown).
    pub port: u16,
    /// Whether loopback addresses count. Default false: they never reach a peer.
    pub include_loopback: bool,
    /// Whether link-local addresses (169.254/16, fe80::/10) count. Default false: they
    /// do not route beyond the local link.
    pub include_link_local: bool,
    /// Quiet time that ends a burst of interface events. Default
    /// [`DEFAULT_DEBOUNCE`] (250 ms).
    pub debounce: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            port: 0,
            include_loopback: false,
            include_link_local: false,
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// One interface event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InterfaceEvent {
    /// An address appeared (on an interface the source does not name).
    Up(IpAddr),
    /// An address went away.
    Down(IpAddr),
    /// An address appeared on interface `index`: it counts while that interface has
    /// carrier.
    AddressOn {
        /// The address.
        ip: IpAddr,
        /// The interface's index.
        index: u32,
    },
    /// Interface `index` is up with carrier (`true`), or down or without carrier.
    Link {
        /// The interface's index.
        index: u32,
        /// Whether it can carry traffic.
        carrier: bool,
    },
    /// Interface `index` was removed.
    LinkGone {
        /// The interface's index.
        index: u32,
    },
}

impl From<if_watch::IfEvent> for InterfaceEvent {
    fn from(e: if_watch::IfEvent) -> Self {
        match e {
            if_watch::IfEvent::Up(net) => Self::Up(net.addr()),
            if_watch::IfEvent::Down(net) => Self::Down(net.addr()),
        }
    }
}

/// The set of usable local addresses, updated by interface events (pure logic, no
/// I/O): every address the OS holds, less those on an interface without carrier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    /// Each address and, when the source says, the interface it is on.
    addrs: BTreeMap<IpAddr, Option<u32>>,
    /// Interfaces known to be down or without carrier.
    links_down: BTreeSet<u32>,
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

impl AddressSet {
    /// Applies one event; returns whether the set of usable addresses changed.
    pub fn apply(&mut self, event: InterfaceEvent, options: &WatchOptions) -> bool {
        let before = self.socket_addrs(0);
        let counts = |ip: &IpAddr| {
            !((ip.is_loopback() && !options.include_loopback)
                || (is_link_local(ip) && !options.include_link_local)
                || ip.is_unspecified())
        };
        match event {
            InterfaceEvent::Up(ip) if counts(&ip) => {
                self.addrs.insert(ip, None);
            }
            InterfaceEvent::AddressOn { ip, index } if counts(&ip) => {
                self.addrs.insert(ip, Some(index));
            }
            InterfaceEvent::Up(_) | InterfaceEvent::AddressOn { .. } => {}
            InterfaceEvent::Down(ip) => {
                self.addrs.remove(&ip);
            }
            InterfaceEvent::Link { index, carrier } => {
                if carrier {
                    self.links_down.remove(&index);
                } else {
                    self.links_down.insert(index);
                }
            }
            InterfaceEvent::LinkGone { index } => {
                self.links_down.remove(&index);
                self.addrs.retain(|_, on| *on != Some(index));
            }
        }
        self.socket_addrs(0) != before
    }

    /// The usable addresses with `port`, in a stable order.
    pub fn socket_addrs(&self, port: u16) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .filter(|(_, on)| on.is_none_or(|index| !self.links_down.contains(&index)))
            .map(|(ip, _)| SocketAddr::new(*ip, port))
            .collect()
    }
}

/// Where interface events come from: rtnetlink on Linux (addresses and link state),
/// `if-watch` elsewhere (addresses).
#[cfg(target_os = "linux")]
type IfWatcher = crate::netlink_watch::NetlinkSource;
#[cfg(not(target_os = "linux"))]
type IfWatcher = if_watch::tokio::IfWatcher;

#[cfg(target_os = "linux")]
async fn next_event(watcher: &mut IfWatcher) -> io::Result<InterfaceEvent> {
    watcher.next().await
}

#[cfg(not(target_os = "linux"))]
async fn next_event(watcher: &mut IfWatcher) -> io::Result<InterfaceEvent> {
    poll_fn(|cx| watcher.poll_if_event(cx))
        .await
        .map(InterfaceEvent::from)
}

/// Applies events until `debounce` passes without one. Errors end the watch.
async fn drain_burst(
    watcher: &mut IfWatcher,
    set: &mut AddressSet,
    options: &WatchOptions,
) -> io::Result<()> {
    while let Ok(event) = tokio::time::timeout(options.debounce, next_event(watcher)).await {
        set.apply(event?, options);
    }
    Ok(())
}

/// Watches the OS's interface addresses and emits a [`ConnectivityChanged`] per burst
/// of changes. Stops when dropped.
#[derive(Debug)]
pub struct InterfaceWatcher {
    task: AbortHandle,
    current: Arc<Mutex<Vec<SocketAddr>>>,
}

impl InterfaceWatcher {
    /// Starts watching; returns once the initial addresses are known (no event is
    /// emitted for them). Fails if the OS offers no interface notifications.
    pub async fn start(trigger: ConnectivityTrigger, options: WatchOptions) -> io::Result<Self> {
        let mut watcher = IfWatcher::new()?;
        let mut set = AddressSet::default();
        drain_burst(&mut watcher, &mut set, &options).await?;
        let current = Arc::new(Mutex::new(set.socket_addrs(options.port)));
        let shared = current.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = watch(watcher, set, options, trigger, shared).await {
                tracing::warn!(error = %e, "interface watcher stopped");
            }
        })
        .abort_handle();
        Ok(Self { task, current })
    }

    /// The local addresses as of the last event.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        lock(&self.current).clone()
    }
}

impl Drop for InterfaceWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(
    mut watcher: IfWatcher,
    mut set: AddressSet,
    options: WatchOptions,
    trigger: ConnectivityTrigger,
    current: Arc<Mutex<Vec<SocketAddr>>>,
) -> io::Result<()> {
    loop {
        let event = next_event(&mut watcher).await?;
        set.apply(event, &options);
        drain_burst(&mut watcher, &mut set, &options).await?;
        let new = set.socket_addrs(options.port);
        let old = std::mem::replace(&mut *lock(&current), new.clone());
        if old != new {
            tracing::info!(?old, ?new, "local addresses changed");
            if !trigger.notify(old, new) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_set_filters_and_orders() {
        let opts = WatchOptions {
            port: 7000,
            ..WatchOptions::default()
        };
        let mut set = AddressSet::default();
        assert!(!set.apply(InterfaceEvent::Up(ip("127.0.0.1")), &opts));
        assert!(!set.apply(InterfaceEvent::Up(ip("fe80::1")), &opts));
        assert!(set.apply(InterfaceEvent::Up(ip("192.168.1.20")), &opts));
        assert!(set.apply(InterfaceEvent::Up(ip("10.0.0.5")), &opts));
        assert!(!set.apply(InterfaceEvent::Up(ip("10.0.0.5")), &opts));
        assert_eq!(
            set.socket_addrs(7000),
            vec![
                "10.0.0.5:7000".parse().unwrap(),
                "192.168.1.20:7000".parse().unwrap()
            ]
        );
        assert!(set.apply(InterfaceEvent::Down(ip("192.168.1.20")), &opts));
        assert_eq!(set.socket_addrs(1).len(), 1);
    }

    #[test]
    fn an_interface_without_carrier_stops_counting_while_it_keeps_its_address() {
        let opts = WatchOptions::default();
        let mut set = AddressSet::default();
        let wifi = 2;
        let mobile = 3;
        assert!(!set.apply(
            InterfaceEvent::Link {
                index: wifi,
                carrier: true
            },
            &opts
        ));
        assert!(!set.apply(
            InterfaceEvent::Link {
                index: mobile,
                carrier: true
            },
            &opts
        ));
        assert!(set.apply(
            InterfaceEvent::AddressOn {
                ip: ip("10.1.0.2"),
                index: wifi
            },
            &opts
        ));
        assert!(set.apply(
            InterfaceEvent::AddressOn {
                ip: ip("10.2.0.2"),
                index: mobile
            },
            &opts
        ));
        // WiFi loses carrier; its address stays configured.
        assert!(set.apply(
            InterfaceEvent::Link {
                index: wifi,
                carrier: false
            },
            &opts
        ));
        assert_eq!(set.socket_addrs(7), vec!["10.2.0.2:7".parse().unwrap()]);
        assert!(!set.apply(
            InterfaceEvent::Link {
                index: wifi,
                carrier: false
            },
            &opts
        ));
        // Carrier back: the address counts again.
        assert!(set.apply(
            InterfaceEvent::Link {
                index: wifi,
                carrier: true
            },
            &opts
        ));
        assert_eq!(set.socket_addrs(7).len(), 2);
        // The interface is removed: its addresses go with it.
        assert!(set.apply(InterfaceEvent::LinkGone { index: mobile }, &opts));
        assert_eq!(set.socket_addrs(7), vec!["10.1.0.2:7".parse().unwrap()]);
    }

    #[tokio::test]
    async fn manual_trigger_reaches_the_event_stream() {
        let (trigger, mut events) = channel();
        let old: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let new: SocketAddr = "127.0.0.2:4000".parse().unwrap();
        assert!(trigger.notify(vec![old], vec![new]));
        assert_eq!(
            events.next().await,
            Some(ConnectivityChanged {
                old: vec![old],
                new: vec![new]
            })
        );
        drop(trigger);
        assert_eq!(events.next().await, None);
    }

    /// Real netlink, real time: the watcher starts and knows this machine's loopback
    /// address. (Adding an address needs privileges, so the change path is covered by
    /// the pure `AddressSet` test and the manual trigger.)
    #[tokio::test]
    async fn interface_watcher_sees_the_current_addresses() {
        let (trigger, _events) = channel();
        let opts = WatchOptions {
            port: 9,
            include_loopback: true,
            debounce: Duration::from_millis(50),
            ..WatchOptions::default()
        };
        let watcher = match InterfaceWatcher::start(trigger, opts).await {
            Ok(w) => w,
            Err(e) => panic!("netlink interface watching unavailable: {e}"),
        };
        assert!(watcher
            .addresses()
            .contains(&"127.0.0.1:9".parse().unwrap()));
    }
}
