//! The presence orchestrator of Tether.
//!
//! Its sans-IO core and actix actor arrive with the establishment issue; see
//! `DESIGN.md` (roles) for what it will own.
