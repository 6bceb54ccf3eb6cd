//! Tether's transport: the only crate that touches sockets.
