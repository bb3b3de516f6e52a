//! Live pages: a server-sent event stream telling a signed-in page that something it shows
//! changed (`changed`, with the rollout id), so `static/live.js` can fetch the page again and
//! swap its live regions. Changes arrive through NOTIFY ([`AppState::updates`]), so a change
//! made by any replica reaches every dashboard. Bursts are coalesced, and a stream ends after
//! a while (the browser reconnects) so no connection outlives a revoked session for long.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::Session;
use crate::AppState;

/// How long changes are gathered before one event is sent.
const COALESCE: Duration = Duration::from_millis(200);
/// How long one stream lives before the browser is asked to reconnect.
const LIFETIME: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
pub(super) struct LiveQuery {
    /// Only changes of this rollout (its page); every rollout otherwise (the overview).
    #[serde(default)]
    rollout: Option<Uuid>,
}

pub(super) async fn stream(
    _session: Session,
    State(state): State<AppState>,
    Query(query): Query<LiveQuery>,
) -> impl IntoResponse {
    let mut updates = state.updates.subscribe();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(8);
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(LIFETIME);
        tokio::pin!(deadline);
        // Tell the page where it stands at once, so one that connected late refreshes.
        if sender
            .send(Event::default().event("hello").data("listening"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let changed = tokio::select! {
                changed = updates.recv() => changed,
                () = &mut deadline => return,
                () = sender.closed() => return,
            };
            let id = match changed {
                Ok(id) if query.rollout.is_none_or(|wanted| wanted == id) => Some(id),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            };
            // Gather the burst (one transition notifies several times).
            let gather = tokio::time::sleep(COALESCE);
            tokio::pin!(gather);
            loop {
                tokio::select! {
                    more = updates.recv() => if let Err(RecvError::Closed) = more { break },
                    () = &mut gather => break,
                }
            }
            let data = id.map_or_else(|| "many".to_owned(), |id| id.to_string());
            if sender
                .send(Event::default().event("changed").data(data))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver).map(Ok::<_, Infallible>);
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
}
