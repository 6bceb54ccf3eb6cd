//! Error types of the transport, one enum per operation, so callers match on what
//! actually went wrong (unreachable, timed out, refused, lost) instead of on strings.

use crate::link::close_code;
use std::io;
use std::net::SocketAddr;

use thiserror::Error;

/// A [`TransportConfig`](crate::TransportConfig) value that quinn or the framing would
/// reject.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// Keep-alive must be non-zero and shorter than the idle timeout, or every idle
    /// connection would die between two PINGs.
    #[error("keep-alive must be non-zero and shorter than the idle timeout")]
    KeepAliveNotBelowIdleTimeout,
    /// QUIC encodes the idle timeout in milliseconds as a 62-bit integer.
    #[error("idle timeout does not fit QUIC's idle timeout parameter")]
    IdleTimeoutTooLong,
    /// The frame length must be positive and fit the u32 length prefix.
    #[error("max frame length {0} must be between 1 and u32::MAX")]
    BadMaxFrameLen(usize),
    /// At least one incoming handshake must be allowed at a time.
    #[error("max_pending_accepts and max_pending_accepts_per_source must be at least 1")]
    NoPendingAccepts,
    /// Dial and accept deadlines must be positive.
    #[error("dial and accept timeouts must be non-zero")]
    ZeroTimeout,
}

/// Building, binding or rebinding an [`Endpoint`](crate::Endpoint) failed.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// The configuration is invalid.
    #[error("invalid transport config: {0}")]
    Config(#[from] ConfigError),
    /// The local address could not be bound (in use, not ours, wrong family...).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// Why the OS (or the simulated network) refused.
        source: io::Error,
    },
    /// Generating the ephemeral certificate or the TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// The broad class of a dial failure: what the session layer branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DialFailure {
    /// The candidate list was empty.
    NoCandidates,
    /// The address cannot be reached from this endpoint (wrong address family,
    /// unspecified address, port 0, or no local address to send from).
    Unreachable,
    /// Nobody answered before the deadline.
    TimedOut,
    /// Something answered and said no (closed the handshake, reset, wrong protocol).
    Refused,
    /// The local endpoint is shutting down.
    EndpointClosed,
    /// Several candidates failed for different reasons.
    Mixed,
}

/// Dialling a peer failed.
#[derive(Debug, Error)]
pub enum DialError {
    /// `dial_any` was given no candidate.
    #[error("no candidate address to dial")]
    NoCandidates,
    /// The address cannot be reached from this endpoint.
    #[error("{addr} is unreachable: {reason}")]
    Unreachable {
        /// The candidate.
        addr: SocketAddr,
        /// Why it cannot be reached.
        reason: String,
    },
    /// No answer before the deadline (handshake or dial timeout).
    #[error("dialling {addr} timed out")]
    TimedOut {
        /// The candidate.
        addr: SocketAddr,
    },
    /// The remote side answered and refused or broke the handshake.
    #[error("{addr} refused the connection: {reason}")]
    Refused {
        /// The candidate.
        addr: SocketAddr,
        /// What the remote (or QUIC) said.
        reason: String,
    },
    /// The local endpoint is closing.
    #[error("the local endpoint is closed")]
    EndpointClosed,
    /// Every candidate failed; one entry per candidate, in dial order.
    #[error("all {} candidates failed: {}", .0.len(), summarize(.0))]
    AllFailed(Vec<DialError>),
}

fn summarize(errors: &[DialError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl DialError {
    /// The class of the failure; for [`DialError::AllFailed`], the shared class of all
    /// attempts, or [`DialFailure::Mixed`].
    pub fn kind(&self) -> DialFailure {
        match self {
            Self::NoCandidates => DialFailure::NoCandidates,
            Self::Unreachable { .. } => DialFailure::Unreachable,
            Self::TimedOut { .. } => DialFailure::TimedOut,
            Self::Refused { .. } => DialFailure::Refused,
            Self::EndpointClosed => DialFailure::EndpointClosed,
            Self::AllFailed(all) => {
                let mut kinds = all.iter().map(Self::kind);
                match kinds.next() {
                    None => DialFailure::NoCandidates,
                    Some(first) if kinds.all(|k| k == first) => first,
                    Some(_) => DialFailure::Mixed,
                }
            }
        }
    }

    pub(crate) fn from_connect(addr: SocketAddr, e: quinn::ConnectError) -> Self {
        match e {
            quinn::ConnectError::EndpointStopping => Self::EndpointClosed,
            other => Self::Unreachable {
                addr,
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn from_connection(addr: SocketAddr, e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::TimedOut => Self::TimedOut { addr },
            quinn::ConnectionError::LocallyClosed => Self::EndpointClosed,
            other => Self::Refused {
                addr,
                reason: other.to_string(),
            },
        }
    }
}

/// Why a link's QUIC connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// Nothing was heard from the peer for the idle timeout (path dead, peer gone, or
    /// the peer moved and can no longer reach us).
    IdleTimeout,
    /// The peer closed the connection.
    ClosedByPeer {
        /// The QUIC or application error code.
        code: u64,
        /// The peer's reason phrase, lossily decoded.
        reason: String,
    },
    /// This side closed the link.
    ClosedLocally,
    /// This side accepted the connection and then moved to a new local address; QUIC
    /// lets only the dialling side migrate (RFC 9000 §9), so the link is gone and the
    /// session layer must re-dial (a transport-only reconnect, not a handshake).
    LocalAddressChanged,
    /// The peer answered with a stateless reset: it no longer knows this connection.
    Reset,
    /// The peer closed the connection with a farewell: its session layer's last frame,
    /// carried in the close itself so that it needs no stream data to get through.
    Farewell {
        /// The encoded frame.
        frame: Vec<u8>,
    },
    /// A QUIC protocol error.
    Transport(String),
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IdleTimeout => write!(f, "idle timeout"),
            Self::ClosedByPeer { code, reason } => write!(f, "closed by peer ({code}: {reason})"),
            Self::ClosedLocally => write!(f, "closed locally"),
            Self::LocalAddressChanged => write!(f, "local address changed on the accepting side"),
            Self::Reset => write!(f, "stateless reset"),
            Self::Farewell { frame } => {
                write!(f, "closed by peer with a farewell of {} bytes", frame.len())
            }
            Self::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl From<quinn::ConnectionError> for LostReason {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::TimedOut => Self::IdleTimeout,
            E::LocallyClosed => Self::ClosedLocally,
            E::Reset => Self::Reset,
            E::ApplicationClosed(c)
                if c.error_code.into_inner() == u64::from(close_code::FAREWELL) =>
            {
                Self::Farewell {
                    frame: c.reason.to_vec(),
                }
            }
            E::ApplicationClosed(c) => Self::ClosedByPeer {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            E::ConnectionClosed(c) => Self::ClosedByPeer {
                code: u64::from(c.error_code),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            other => Self::Transport(other.to_string()),
        }
    }
}

/// Sending or receiving a frame failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkError {
    /// The connection is gone.
    #[error("link lost: {0}")]
    Lost(LostReason),
    /// The frame is larger than the configured maximum (a local bug: nothing was sent).
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Empty frames are not sent: a sealed frame always carries at least its tag.
    #[error("empty frame")]
    EmptyFrame,
    /// The peer stopped reading our stream.
    #[error("peer stopped the frame stream (code {0})")]
    Stopped(u64),
    /// The peer reset its stream.
    #[error("peer reset the frame stream (code {0})")]
    Reset(u64),
    /// A previous send was cancelled half-way, so the stream can no longer be framed.
    #[error("link broken by a cancelled send")]
    Broken,
    /// An I/O error on a non-QUIC link (relay stream).
    #[error("I/O error: {0}")]
    Io(String),
}
