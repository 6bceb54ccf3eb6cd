//! Tether's transport: the only crate that touches sockets.
//!
//! It moves *sealed* frames between two devices and nothing else. Every byte the
//! session layer hands in has already been sealed with the Noise session keys; this
//! crate never sees plaintext and never decides who a peer is.
//!
//! # What is here
//!
//! - [`Endpoint`]: one QUIC endpoint per device (quinn), client and server on one UDP
//!   socket, over real UDP or over the simulated network. It dials, accepts and
//!   [`rebind`](Endpoint::rebind)s to a new local address when the device changes
//!   networks.
//! - [`Link`]: one QUIC connection carrying length-delimited frames on one
//!   bidirectional stream (and on a fresh stream after the peer's address changed),
//!   split into a cloneable [`LinkSender`] and a [`LinkReceiver`] so a reader task and
//!   writers can run concurrently.
//! - [`dial_any`]: happy-eyeballs dialling of several candidates, first success wins.
//! - [`sim`]: an in-process simulated network implementing quinn's `AsyncUdpSocket`,
//!   deterministic and driven by tokio's (pausable) clock.
//! - [`connectivity`]: local interface watching and a manual trigger, both yielding
//!   `ConnectivityChanged`.
//! - [`bench`](mod@bench): bare quinn with a Tether endpoint's settings, the baseline that
//!   benchmarks measure links and sessions against.
//!
//! # QUIC is transport only
//!
//! QUIC's TLS here uses an ephemeral self-signed certificate and the client accepts any
//! server certificate (it still checks the handshake signatures). That is deliberate:
//! **peer identity comes from Noise in the session layer**, never from QUIC. A
//! man-in-the-middle on the QUIC layer sees only Noise ciphertext and can do nothing an
//! on-path attacker could not do anyway (drop, delay, reorder). See [`quic`].
//!
//! # Frames ride a stream, not QUIC datagrams
//!
//! Frames travel on one reliable, ordered QUIC stream: the session layer gets loss
//! recovery and congestion control for its data for free, and frames larger than a
//! packet need no fragmentation of our own. QUIC datagrams are disabled for now; small
//! unreliable probes (migration pings) may use them later.

pub mod bench;
pub mod config;
pub mod connectivity;
mod dial;
mod endpoint;
mod error;
pub mod framing;
mod link;
#[cfg(target_os = "linux")]
mod netlink_watch;
mod path_sampling;
pub mod quic;
mod receive_drops;
pub mod sim;
mod socket;
pub mod stats;
mod sync;

#[cfg(test)]
mod hostile_tests;

pub use config::TransportConfig;
pub use dial::dial_any;
pub use endpoint::{Endpoint, RebindOutcome};
pub use error::{ConfigError, DialError, DialFailure, EndpointError, LinkError, LostReason};
pub use link::{
    Link, LinkHandle, LinkReceiver, LinkRole, LinkSender, PathStats, CHANNEL_BINDING_LABEL,
    CHANNEL_BINDING_LEN, MAX_FAREWELL_LEN,
};
pub use path_sampling::{PathSampler, PATH_SAMPLE_INTERVAL, PATH_SAMPLE_MIN_FRAMES};
pub use socket::{receive_buffer_ceiling_bytes, RECEIVE_BUFFER_BYTES};
pub use stats::{EndpointStats, LinkStats};
pub use tether_protocol::LinkId;
