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

/// Implements `Handler<M>` for an actor shell for each listed message, feeding the
/// message to its core as the given input variant through the shell's
/// `fn feed(&mut self, input, ctx: &mut Context<Self>)`.
///
/// ```ignore
/// tether_protocol::feed_messages!(PresenceOrchestrator {
///     ConnectivityChanged => Input::ConnectivityChanged,
/// });
/// ```
#[macro_export]
macro_rules! feed_messages {
    ($actor:ty { $($message:ty => $variant:expr),* $(,)? }) => {
        $(
            impl ::actix::Handler<$message> for $actor {
                type Result = ();
                fn handle(&mut self, message: $message, ctx: &mut Self::Context) {
                    self.feed($variant(message), ctx);
                }
            }
        )*
    };
}

/// Implements `Handler<Shutdown>` for an actor: it stops.
#[macro_export]
macro_rules! stops_on_shutdown {
    ($actor:ty) => {
        impl ::actix::Handler<$crate::Shutdown> for $actor {
            type Result = ();
            fn handle(&mut self, _message: $crate::Shutdown, ctx: &mut Self::Context) {
                ::actix::ActorContext::stop(ctx);
            }
        }
    };
}
