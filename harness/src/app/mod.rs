//! The `tether` binary's library half: everything the commands do, in modules the
//! binary wires to its command line (the binary itself only parses arguments, sets
//! up logging and maps errors to exit codes).
//!
//! | module | command |
//! |---|---|
//! | [`bench`](mod@bench) | `tether bench`: throughput, handshake cost, many idle sessions |
//! | [`demo`] | `tether demo`: the scenarios, in one process |
//! | [`episodes`] | one log line when a kind of refusal starts, one when it stops |
//! | [`keys`] | `tether keygen`, `tether pair` |
//! | [`pairing`] | `tether invite`, `tether accept`: pairing two machines with a one-time code |
//! | [`peers_file`] | writing a `[[peers]]` entry into a node config, keeping its format |
//! | [`config`] | the config files of `tether node` and `tether relay` |
//! | [`node`] | `tether node`: one device, its control socket, interface watching |
//! | [`relay`] | `tether relay`: the relay and rendezvous server |
//! | [`control`] | the control socket protocol (`status`, `send`, `watch`, `migrate`) |
//! | [`netcheck`] | `tether netcheck`: the relay reachable over UDP, its key, the addresses to announce |
//! | [`metrics`] | the HTTP listener of `metrics_addr`; the reports and Prometheus text are the library's |
//! | [`paths`] | default config, socket and data paths (XDG, or a system service's) |
//! | [`run`] | what `node` and `relay` share to run: errors, endpoint, stop signals |
//! | [`server_session`] | driving a relay client of its own (pairing, netcheck) over a real UDP endpoint |

pub mod bench;
pub mod control;
pub mod demo;
pub mod episodes;
pub mod keys;
pub mod metrics;
pub mod netcheck;
pub mod node;
pub mod pairing;
pub mod peers_file;
pub mod relay;
pub mod run;
pub mod server_session;

// The node config loader and the default paths live in the library, so an application
// embedding `tether` reads the same config file.
pub use tether::{config, paths};
