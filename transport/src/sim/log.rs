//! The packet log of the simulated network: one line per packet decision, in virtual
//! time, so tests can assert on (and snapshot) exactly what crossed the network.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// What the network did with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Scheduled for delivery at the given virtual time (since the network was created).
    Delivered {
        /// Arrival time.
        at: Duration,
    },
    /// Delivered, and a duplicate scheduled too.
    Duplicated {
        /// Arrival time of the first copy.
        at: Duration,
        /// Arrival time of the duplicate.
        dup_at: Duration,
    },
    /// Held back by the reorder delay, arriving at the given time.
    Reordered {
        /// Arrival time.
        at: Duration,
    },
    /// Dropped by random loss.
    Lost,
    /// Dropped: the two hosts are partitioned.
    Partitioned,
    /// Dropped: direct UDP between the two hosts is blocked.
    Blocked,
    /// Dropped: larger than the path MTU.
    TooBig,
    /// Dropped: the bottleneck queue was full.
    QueueFull,
    /// Dropped: nobody owns the destination address (or a NAT had no live mapping for
    /// it, on sending or on arrival).
    NoRoute,
    /// Dropped on arrival at a NAT: a mapping holds the port, but its filter does not
    /// admit the sender (address- or port-dependent filtering).
    NatFiltered,
    /// Dropped: the sending socket's address no longer belongs to its host.
    SourceGone,
    /// Dropped on arrival: no socket bound at the destination (any more).
    NoSocket,
    /// Dropped on arrival: the destination socket's receive buffer was full.
    ReceiveBufferFull,
}

impl Verdict {
    /// Whether the packet was (or will be) handed to a socket.
    pub fn is_delivered(&self) -> bool {
        matches!(
            self,
            Self::Delivered { .. } | Self::Duplicated { .. } | Self::Reordered { .. }
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{}.{:03}", d.as_millis(), d.subsec_micros() % 1000)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delivered { at } => write!(f, "delivered@{}", ms(*at)),
            Self::Duplicated { at, dup_at } => {
                write!(f, "duplicated@{},{}", ms(*at), ms(*dup_at))
            }
            Self::Reordered { at } => write!(f, "reordered@{}", ms(*at)),
            Self::Lost => write!(f, "dropped-loss"),
            Self::Partitioned => write!(f, "dropped-partition"),
            Self::Blocked => write!(f, "dropped-blocked"),
            Self::TooBig => write!(f, "dropped-mtu"),
            Self::QueueFull => write!(f, "dropped-queue"),
            Self::NoRoute => write!(f, "dropped-no-route"),
            Self::NatFiltered => write!(f, "dropped-nat-filter"),
            Self::SourceGone => write!(f, "dropped-source-gone"),
            Self::NoSocket => write!(f, "dropped-no-socket"),
            Self::ReceiveBufferFull => write!(f, "dropped-rcvbuf"),
        }
    }
}

/// One line of the packet log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketLogEntry {
    /// Virtual time of the decision, since the network was created.
    pub at: Duration,
    /// Source address as the destination sees it (after NAT).
    pub from: SocketAddr,
    /// Destination address the packet was sent to.
    pub to: SocketAddr,
    /// UDP payload length.
    pub len: usize,
    /// What happened to it.
    pub verdict: Verdict,
}

impl fmt::Display for PacketLogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10}ms {} -> {} {}B {}",
            ms(self.at),
            self.from,
            self.to,
            self.len,
            self.verdict
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_render_on_one_line() {
        let e = PacketLogEntry {
            at: Duration::from_micros(12_345),
            from: "10.0.0.1:1000".parse().unwrap(),
            to: "10.0.0.2:2000".parse().unwrap(),
            len: 1200,
            verdict: Verdict::Delivered {
                at: Duration::from_micros(22_345),
            },
        };
        assert_eq!(
            e.to_string(),
            "    12.345ms 10.0.0.1:1000 -> 10.0.0.2:2000 1200B delivered@22.345"
        );
    }
}
