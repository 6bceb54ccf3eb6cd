//! Parallel, staggered dialling of several candidates ("happy eyeballs", RFC 8305):
//! the first candidate is tried at once, the next one `dial_stagger` later (or at once
//! when an attempt fails), and the first link established wins; the other attempts are
//! cancelled, which closes their QUIC connections.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::error::DialError;
use crate::link::Link;

/// Dials `candidates` in order with the endpoint's stagger and returns the first link
/// established. Duplicate candidates are tried once.
///
/// Errors: [`DialError::NoCandidates`] for an empty list; the single attempt's error
/// for one candidate; otherwise [`DialError::AllFailed`] with one error per candidate
/// (use [`DialError::kind`] to branch). The whole call is bounded by the configured
/// `dial_timeout`; attempts still running then fail with [`DialError::TimedOut`].
pub async fn dial_any(endpoint: &Endpoint, candidates: &[SocketAddr]) -> Result<Link, DialError> {
    let mut seen = BTreeSet::new();
    let queue: Vec<SocketAddr> = candidates
        .iter()
        .copied()
        .filter(|a| seen.insert(*a))
        .collect();
    if queue.is_empty() {
        return Err(DialError::NoCandidates);
    }
    let config = endpoint.config();
    let deadline = Instant::now() + config.dial_timeout;
    let stagger = config.dial_stagger;

    let mut pending = queue.iter().copied().enumerate().peekable();
    let mut attempts: JoinSet<(usize, Result<Link, DialError>)> = JoinSet::new();
    let mut errors: Vec<Option<DialError>> = queue.iter().map(|_| None).collect();
    let mut next_start = Instant::now();
    let mut exhausted = false;

    loop {
        if attempts.is_empty() && exhausted {
            break;
        }
        tokio::select! {
            biased;
            joined = attempts.join_next(), if !attempts.is_empty() => {
                match joined {
                    Some(Ok((_, Ok(link)))) => {
                        attempts.abort_all();
                        return Ok(link);
                    }
                    Some(Ok((i, Err(e)))) => {
                        tracing::debug!(addr = %queue[i], error = %e, "dial attempt failed");
                        errors[i] = Some(e);
                        // RFC 8305 §5: a failure starts the next attempt right away.
                        next_start = Instant::now();
                    }
                    // A panicked or aborted attempt task: its slot stays a timeout.
                    Some(Err(_)) | None => {}
                }
            }
            () = tokio::time::sleep_until(next_start), if !exhausted => {
                match pending.next() {
                    Some((i, addr)) => {
                        let endpoint = endpoint.clone();
                        attempts.spawn(async move { (i, endpoint.dial(addr).await) });
                        next_start = Instant::now() + stagger;
                        exhausted = pending.peek().is_none();
                    }
                    None => exhausted = true,
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                attempts.abort_all();
                break;
            }
        }
    }

    let mut all: Vec<DialError> = queue
        .iter()
        .zip(errors)
        .map(|(addr, e)| e.unwrap_or(DialError::TimedOut { addr: *addr }))
        .collect();
    if all.len() == 1 {
        if let Some(only) = all.pop() {
            return Err(only);
        }
    }
    Err(DialError::AllFailed(all))
}
