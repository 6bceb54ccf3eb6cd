//! The Tether node, relay server and integration harness.
//!
//! Wires the orchestrator actors and the transport into a device node; the
//! simulated cluster and the `tether` binary arrive with later issues.
