//! Counters: what the transport sent, received and dropped.
//!
//! Bad input from the network is never an error that kills something: it is dropped
//! and counted here, so tests and operators can see it happened. Counters are atomics
//! updated on the hot path; the public types are plain snapshots.

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares a private atomic counter set and its public snapshot type.
macro_rules! counters {
    (
        $(#[$snap_meta:meta])*
        $atomic:ident => $snap:ident {
            $( $(#[$field_meta:meta])* $field:ident, )*
        }
    ) => {
        /// Live atomic counters behind a snapshot type.
        #[derive(Debug, Default)]
        pub(crate) struct $atomic {
            $( pub(crate) $field: AtomicU64, )*
        }

        impl $atomic {
            /// Reads every counter (each one atomically; the set is not a transaction).
            pub(crate) fn snapshot(&self) -> $snap {
                $snap { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }

        $(#[$snap_meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $snap {
            $( $(#[$field_meta])* pub $field: u64, )*
        }
    };
}

counters! {
    /// Counters of one [`Endpoint`](crate::Endpoint), across rebinds.
    EndpointCounters => EndpointStats {
        /// UDP datagrams handed to the socket.
        datagrams_sent,
        /// Bytes in those datagrams.
        bytes_sent,
        /// UDP datagrams received and passed to QUIC.
        datagrams_received,
        /// Bytes in those datagrams.
        bytes_received,
        /// Datagrams dropped before QUIC saw them: shorter than any QUIC packet, or with
        /// the QUIC fixed bit clear (not QUIC at all).
        ///
        /// Of the datagrams that do look like QUIC, two kinds are counted below; the rest
        /// that quinn drops are not counted anywhere, since quinn reports no drops: long
        /// headers of QUIC v1 for no connection of ours, malformed headers, Initials too
        /// short or over quinn's buffer for pending handshakes, and packets of a live
        /// connection that fail authentication.
        garbage_datagrams_dropped,
        /// Long-header datagrams naming a QUIC version we do not speak, too short to be
        /// answered with a version negotiation: dropped before QUIC saw them (quinn
        /// would drop them too, as RFC 9000 §5.2.2 requires). Longer ones are answered.
        unsupported_version_dropped,
        /// Short-header datagrams whose connection id this endpoint never issued
        /// (random bytes, or a connection of an earlier process): dropped inside quinn,
        /// counted where quinn checks the id.
        unknown_connection_dropped,
        /// Datagrams the kernel dropped because the socket's receive buffer was full,
        /// over every socket the endpoint used (Linux: the `drops` column of
        /// `/proc/net/udp` and `/proc/net/udp6`, read when the counters are read).
        /// Always 0 on other systems and on the simulated network.
        receive_buffer_drops,
        /// Links this endpoint dialled successfully.
        links_dialled,
        /// Links this endpoint accepted successfully.
        links_accepted,
        /// Incoming connections refused because `max_pending_accepts` were in progress.
        incoming_refused,
        /// Incoming connections whose handshake failed or that never opened their frame
        /// stream in time.
        accept_failures,
        /// Incoming connections whose frame stream did not start with the link preamble.
        bad_streams,
        /// Successful rebinds to a new local socket.
        rebinds,
    }
}

counters! {
    /// Counters of one link (QUIC or relay stream).
    LinkCounters => LinkStats {
        /// Frames sent.
        frames_sent,
        /// Payload bytes in those frames (length prefixes not included).
        bytes_sent,
        /// Frames received and handed to the caller.
        frames_received,
        /// Payload bytes in those frames.
        bytes_received,
        /// Frames whose length prefix exceeded the maximum: skipped without allocating.
        oversized_frames_dropped,
        /// Zero-length frames (a sealed frame is never empty): dropped.
        empty_frames_dropped,
        /// A partial frame at the end of the stream: dropped.
        truncated_frames_dropped,
        /// Times the sending side moved to a fresh stream because the peer's address
        /// changed (see [`LinkSender::send_frame`](crate::LinkSender::send_frame)).
        stream_rollovers,
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Widens a length for a counter (usize always fits u64 on supported targets).
pub(crate) fn len64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
