//! Datagrams the kernel dropped because a socket's receive buffer was full: a flood, or
//! a node too busy to read, loses datagrams before any Tether code sees them.
//!
//! Linux counts these per socket (`sk_drops`) and shows them in the last column,
//! `drops`, of `/proc/net/udp` and `/proc/net/udp6`, one line per socket, found by the
//! socket's inode (the number in the `socket:[inode]` link of `/proc/self/fd/FD`). The
//! endpoint keeps the inodes of its open sockets, reads the table when its counters are
//! read, and adds the last reading of each socket it closed (a rebind). Elsewhere, and
//! on the simulated network, nothing is registered and the count stays 0.
//!
//! (`SO_RXQ_OVFL` would report the same count with each received datagram, but quinn
//! reads the socket and its control messages itself.)

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// The kernel's receive-buffer drops over every socket of one endpoint.
#[derive(Debug, Default)]
pub(crate) struct ReceiveDrops(Mutex<Sockets>);

#[derive(Debug, Default)]
struct Sockets {
    /// Inodes of the sockets still open.
    open: BTreeSet<u64>,
    /// Drops counted on sockets closed since (their last reading).
    closed: u64,
}

impl ReceiveDrops {
    /// Drops so far: the closed sockets' and, read now, the open ones'.
    pub(crate) fn total(&self) -> u64 {
        let sockets = lock(&self.0);
        if sockets.open.is_empty() {
            return sockets.closed;
        }
        sockets
            .closed
            .saturating_add(read_drops(&sockets.open).unwrap_or(0))
    }

    /// Starts counting the socket with `inode`; it is counted until the returned guard
    /// drops, which must happen while the socket is still open.
    pub(crate) fn register(self: &Arc<Self>, inode: u64) -> OpenSocket {
        lock(&self.0).open.insert(inode);
        OpenSocket {
            drops: self.clone(),
            inode,
        }
    }
}

/// One open socket being counted; on drop its last reading is kept.
#[derive(Debug)]
pub(crate) struct OpenSocket {
    drops: Arc<ReceiveDrops>,
    inode: u64,
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        let mut sockets = lock(&self.drops.0);
        let last = read_drops(&BTreeSet::from([self.inode])).unwrap_or(0);
        sockets.closed = sockets.closed.saturating_add(last);
        sockets.open.remove(&self.inode);
    }
}

/// The inode of a socket, from its `/proc/self/fd` link (Linux only).
#[cfg(target_os = "linux")]
pub(crate) fn socket_inode(socket: &std::net::UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Not known outside Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn socket_inode(_socket: &std::net::UdpSocket) -> Option<u64> {
    None
}

/// The drops of the sockets in `inodes`, from the process's network namespace's tables.
fn read_drops(inodes: &BTreeSet<u64>) -> Option<u64> {
    let mut total = 0_u64;
    let mut read_any = false;
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            total = total.saturating_add(drops_in_table(&text, inodes));
        }
    }
    read_any.then_some(total)
}

/// Column of the inode in a `/proc/net/udp` line (after the `sl` column).
const INODE_COLUMN: usize = 9;
/// Column of the drop count: the last one (`sk_drops`).
const DROPS_COLUMN: usize = 12;

/// Sums the `drops` column of the lines of `/proc/net/udp` (or `udp6`: same columns)
/// whose inode is in `inodes`. The header and lines that do not parse are skipped.
pub(crate) fn drops_in_table(text: &str, inodes: &BTreeSet<u64>) -> u64 {
    text.lines()
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = columns.get(INODE_COLUMN)?.parse().ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            columns.get(DROPS_COLUMN)?.parse::<u64>().ok()
        })
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sockets of a real table (Linux 6.x), one with drops.
    const TABLE: &str = "   \
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1187: 0100007F:A11B 00000000:0000 07 00000000:00034200 00:00000000 00000000  1000        0 4519877 2 ffff8f0e4a5b3c00 38211
 2301: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 22015 2 ffff8f0e41d2a400 0
";

    #[test]
    fn drops_are_read_by_inode() {
        assert_eq!(drops_in_table(TABLE, &BTreeSet::from([4519877])), 38211);
        assert_eq!(drops_in_table(TABLE, &BTreeSet::from([22015])), 0);
        assert_eq!(
            drops_in_table(TABLE, &BTreeSet::from([4519877, 22015])),
            38211
        );
        assert_eq!(drops_in_table(TABLE, &BTreeSet::from([7])), 0);
        assert_eq!(drops_in_table("", &BTreeSet::from([7])), 0);
        assert_eq!(drops_in_table("garbage\n1: x y", &BTreeSet::from([7])), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_socket_is_found_in_the_table() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = socket_inode(&socket).unwrap();
        let drops = Arc::new(ReceiveDrops::default());
        let open = drops.register(inode);
        let table = std::fs::read_to_string("/proc/self/net/udp").unwrap();
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().nth(INODE_COLUMN) == Some(&inode.to_string())),
            "inode {inode} in\n{table}"
        );
        assert_eq!(drops.total(), 0);
        drop(open);
        assert_eq!(drops.total(), 0);
    }
}
