//! OpenMeter: `POST {url}/api/v1/events`, a CloudEvents batch
//! (`application/cloudevents-batch+json`), `Authorization: Bearer`. Each
//! event's `id` is the ledger row's `request_id` and `source` the configured
//! source (default `tollgate`): OpenMeter deduplicates on the pair.
//! `subject` is the tenant's OpenMeter subject; `data.cost` the exact cost
//! as a decimal string. A 2xx takes the batch; a 400 (problem details)
//! refuses it, and [`super::sink::deliver`] isolates the bad event.

use super::event::{cloudevents_batch, BATCH_CONTENT_TYPE};
use super::sink::{answer, refusal, Answer, Event, SinkClient};

pub const PATH: &str = "/api/v1/events";

pub fn body(source: &str, events: &[Event<'_>]) -> Vec<u8> {
    let rows: Vec<_> = events.iter().map(|e| (e.row, e.customer)).collect();
    cloudevents_batch(source, &rows)
}

pub async fn post(client: &SinkClient, events: &[Event<'_>]) -> Answer {
    let sent = client
        .http
        .post(format!("{}{PATH}", client.config.base()))
        .bearer_auth(client.config.api_key.expose())
        .header(http::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
        .body(body(&client.config.source, events))
        .send()
        .await;
    answer(
        sent,
        |_| Answer::Accepted,
        |status, body| Answer::Refused(refusal(status, body)),
    )
    .await
}
