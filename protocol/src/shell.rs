//! What every orchestrator's actix shell shares: the runtime clock it feeds its sans-IO
//! core with, and the one timer it keeps armed at the core's next deadline.

use actix::{Actor, AsyncContext, Context, SpawnHandle};
use std::time::Instant;

/// The runtime's clock: tokio's (through actix), so it is virtual under paused time.
/// Only actor shells read it; cores get `now` as an argument.
pub fn runtime_now() -> Instant {
    actix::clock::Instant::now().into_std()
}

/// The single re-armable timer of an actor shell around a sans-IO core.
#[derive(Debug, Default)]
pub struct CoreTimer(Option<SpawnHandle>);

impl CoreTimer {
    /// Cancels the armed timer, then arms one that calls `fire` at `deadline` (if any).
    /// A timer that already fired is cancelled harmlessly.
    pub fn rearm<A>(
        &mut self,
        ctx: &mut Context<A>,
        deadline: Option<Instant>,
        fire: fn(&mut A, &mut Context<A>),
    ) where
        A: Actor<Context = Context<A>>,
    {
        if let Some(handle) = self.0.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = deadline {
            let delay = at.saturating_duration_since(runtime_now());
            self.0 = Some(ctx.run_later(delay, fire));
        }
    }
}
