//! Cross-replica freshness: follows one `NOTIFY` channel (price changes,
//! limit changes) with a `PgListener` and hands every announcement to the
//! caller's reload.
//!
//! PostgreSQL does not queue notifications for a listener that is gone, so
//! every (re)connect is followed by a full reload *after* `LISTEN` is in
//! place: a change committed while disconnected is picked up by that reload,
//! and one committed after it is announced on the new connection. Any
//! failure (of the connection or of a reload) drops the listener and goes
//! through that same path again, with a capped backoff. The periodic reload
//! in `server` stays as a safety net for anything this misses.
//!
//! It owns the listening loop only; what a reload does is the caller's
//! closure, so this module needs no application state. Used by
//! `pricing` (channel `tollgate_prices`) and `limits` (`tollgate_limits`).

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What the caller's reload reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The in-memory table now reflects the database.
    Done,
    /// The reload failed; the table may be stale, so resynchronise.
    Failed,
    /// The state the reload serves is gone; stop listening.
    Stop,
}

/// Why a reload is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A listener connection was (re)established: anything may have
    /// changed meanwhile.
    Connected,
    /// Changes were announced: their payloads, in order.
    Notified(Vec<String>),
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens on `channel` until `stop` is cancelled, the pool is closed or
/// `reload` says [`Reloaded::Stop`]. Uses one connection of `pool` for as
/// long as it runs.
pub async fn follow<F, Fut>(
    pool: PgPool,
    channel: &'static str,
    stop: CancellationToken,
    mut reload: F,
) where
    F: FnMut(Trigger) -> Fut,
    Fut: Future<Output = Reloaded>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            result = listen(&pool, channel) => result,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, channel, "listener cannot connect; retrying");
                if !pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        // Whatever was announced before LISTEN took effect is lost: read all.
        match reload(Trigger::Connected).await {
            Reloaded::Done => backoff = FIRST_BACKOFF,
            Reloaded::Stop => return,
            Reloaded::Failed => {
                if !pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        }
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => received,
            };
            let trigger = match received {
                Ok(Some(notification)) => {
                    // One reload covers every announcement already here.
                    let mut payloads = vec![notification.payload().to_owned()];
                    while let Some(more) = listener.next_buffered() {
                        payloads.push(more.payload().to_owned());
                    }
                    Trigger::Notified(payloads)
                }
                // The connection dropped and sqlx has already reconnected and
                // re-subscribed (eager reconnect): announcements in between
                // are lost, so reload everything.
                Ok(None) => {
                    tracing::info!(channel, "listener reconnected; reloading everything");
                    Trigger::Connected
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(err) => {
                    tracing::warn!(error = %err, channel, "listener lost its connection; reconnecting");
                    break;
                }
            };
            match reload(trigger).await {
                Reloaded::Done => {}
                Reloaded::Stop => return,
                Reloaded::Failed => break,
            }
        }
        drop(listener);
        if !pause(&stop, &mut backoff).await {
            return;
        }
    }
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// Sleeps for `backoff` (doubling it up to the cap); false when stopped.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}
