//! Cross-module tests: handshakes, sessions and the key ring working together.

mod convergence;
mod handshake;
mod keyring;
mod session;
