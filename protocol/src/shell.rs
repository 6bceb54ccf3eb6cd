//! What every orchestrator's actix shell shares: the shape of a sans-IO core
//! ([`SansIoCore`]), the runtime clock the shell feeds it with, the one timer it keeps
//! armed at the core's next deadline, and the feed / drain / re-arm loop itself
//! ([`CoreShell`]), so a shell only says where each output goes.

use actix::{Actor, AsyncContext, Context, SpawnHandle};
use std::time::Instant;

/// A sans-IO core: no clock, no sockets, no tasks. Its shell feeds it inputs and
/// timeouts with the time, and delivers what it outputs.
pub trait SansIoCore {
    /// What the core is told.
    type Input;
    /// What the core asks to be sent.
    type Output;
    /// Feeds one input at `now`.
    fn handle(&mut self, now: Instant, input: Self::Input);
    /// Fires whatever is due at `now`; spurious calls are harmless.
    fn handle_timeout(&mut self, now: Instant);
    /// The next output to deliver.
    fn poll_output(&mut self) -> Option<Self::Output>;
    /// When [`SansIoCore::handle_timeout`] next has something to do.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// An actix actor that only feeds its core and routes the core's outputs.
pub trait CoreShell: Actor<Context = Context<Self>> {
    /// The core it drives.
    type Core: SansIoCore;

    /// The core.
    fn core(&mut self) -> &mut Self::Core;

    /// The shell's timer.
    fn timer(&mut self) -> &mut CoreTimer;

    /// Delivers one output of the core.
    fn route(&mut self, output: <Self::Core as SansIoCore>::Output);

    /// Delivers one output of the core, with the actor's context (a shell that must
    /// wait for a recipient, to pass backpressure on, overrides this).
    fn route_in(&mut self, output: <Self::Core as SansIoCore>::Output, _ctx: &mut Context<Self>) {
        self.route(output);
    }

    /// Feeds one input with the runtime's time, then drains.
    fn feed(&mut self, input: <Self::Core as SansIoCore>::Input, ctx: &mut Context<Self>) {
        self.core().handle(runtime_now(), input);
        self.drain(ctx);
    }

    /// Routes every waiting output, then re-arms the timer at the core's deadline.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(output) = self.core().poll_output() {
            self.route_in(output, ctx);
        }
        let deadline = self.core().poll_timeout();
        self.timer().rearm(ctx, deadline, |actor, ctx| {
            actor.core().handle_timeout(runtime_now());
            actor.drain(ctx);
        });
    }
}

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

/// Implements `Handler<M>` for a [`CoreShell`] for each listed message, feeding the
/// message to its core as the given input variant.
///
/// ```ignore
/// tether_protocol::feed_messages!(Orchestrator {
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
                    $crate::shell::CoreShell::feed(self, $variant(message), ctx);
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
