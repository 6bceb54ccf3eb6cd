//! What a node and the relay report about themselves, served over HTTP: the reports,
//! the per-session bookkeeping and the Prometheus text are the `tether` library's
//! ([`tether::metrics`], re-exported here), so an application embedding a node gets
//! the same text (`tether::Node::metrics`); the binary adds the listener
//! (`metrics_addr`) that serves it.

mod http;

pub use http::{bind_metrics, serve_metrics, MetricsBindError};
pub use tether::metrics::*;
