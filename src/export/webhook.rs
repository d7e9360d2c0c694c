//! Any URL: the same CloudEvents batch as OpenMeter, POSTed to the
//! configured URL as is, signed exactly like the budget alerts
//! (`x-tollgate-signature: sha256=<HMAC-SHA256 of the body>`, keyed by
//! `[alerts] signing_secret`, with the alerts' own code). `subject` is the
//! tenant id: the webhook needs no mapping. A 2xx takes the batch.

use super::event::BATCH_CONTENT_TYPE;
use super::sink::{answer, refusal, Answer, Event, SinkClient};
use crate::limits::alerts::{signature, SIGNATURE_HEADER};

pub async fn post(client: &SinkClient, events: &[Event<'_>]) -> Answer {
    let body = super::openmeter::body(&client.config.source, events);
    let signed = signature(client.signing.expose().as_bytes(), &body);
    let sent = client
        .http
        .post(&client.config.url)
        .header(http::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
        .header(SIGNATURE_HEADER, signed)
        .body(body)
        .send()
        .await;
    answer(
        sent,
        |_| Answer::Accepted,
        |status, body| Answer::Refused(refusal(status, body)),
    )
    .await
}
