//! Counters of refused requests by reason, shared by the server and the client.

use tether_protocol::ServerRefusal;

/// How many requests were refused, per [`ServerRefusal`] reason. Refusals are
/// peer-caused or load-caused, so they are counted for metrics, never raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefusalCounters {
    /// [`ServerRefusal::NotAuthenticated`].
    pub not_authenticated: u64,
    /// [`ServerRefusal::BadProof`].
    pub bad_proof: u64,
    /// [`ServerRefusal::QueueFull`].
    pub queue_full: u64,
    /// [`ServerRefusal::QuotaExceeded`].
    pub quota_exceeded: u64,
    /// [`ServerRefusal::TooLarge`].
    pub too_large: u64,
    /// [`ServerRefusal::NotConnected`].
    pub not_connected: u64,
    /// [`ServerRefusal::NotYours`].
    pub not_yours: u64,
    /// [`ServerRefusal::NotAdmitted`].
    pub not_admitted: u64,
    /// [`ServerRefusal::RateLimited`].
    pub rate_limited: u64,
    /// [`ServerRefusal::Replaced`].
    pub replaced: u64,
}

impl RefusalCounters {
    /// Counts one refusal for `reason`.
    pub fn count(&mut self, reason: ServerRefusal) {
        let slot = match reason {
            ServerRefusal::NotAuthenticated => &mut self.not_authenticated,
            ServerRefusal::BadProof => &mut self.bad_proof,
            ServerRefusal::QueueFull => &mut self.queue_full,
            ServerRefusal::QuotaExceeded => &mut self.quota_exceeded,
            ServerRefusal::TooLarge => &mut self.too_large,
            ServerRefusal::NotConnected => &mut self.not_connected,
            ServerRefusal::NotYours => &mut self.not_yours,
            ServerRefusal::NotAdmitted => &mut self.not_admitted,
            ServerRefusal::RateLimited => &mut self.rate_limited,
            ServerRefusal::Replaced => &mut self.replaced,
        };
        *slot = slot.saturating_add(1);
    }

    /// Each reason's count, named in snake case, for reports.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("not_authenticated", self.not_authenticated),
            ("bad_proof", self.bad_proof),
            ("queue_full", self.queue_full),
            ("quota_exceeded", self.quota_exceeded),
            ("too_large", self.too_large),
            ("not_connected", self.not_connected),
            ("not_yours", self.not_yours),
            ("not_admitted", self.not_admitted),
            ("rate_limited", self.rate_limited),
            ("replaced", self.replaced),
        ]
    }

    /// All refusals together.
    pub fn total(&self) -> u64 {
        self.not_authenticated
            .saturating_add(self.bad_proof)
            .saturating_add(self.queue_full)
            .saturating_add(self.quota_exceeded)
            .saturating_add(self.too_large)
            .saturating_add(self.not_connected)
            .saturating_add(self.not_yours)
            .saturating_add(self.not_admitted)
            .saturating_add(self.rate_limited)
            .saturating_add(self.replaced)
    }
}
