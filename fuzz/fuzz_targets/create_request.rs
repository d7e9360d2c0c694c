//! Fuzz the request parser and the checks every upstream-bound body passes:
//! `tollgate::proxy::request::parse_create` (which runs
//! `proxy::validate::check_body`), and `fallback_facts` / `body_for` for
//! every fallback override the parser accepted.
//!
//! The whole input is the request body (no header), so seeds are plain JSON.
//!
//! Asserted:
//! 1. nothing panics, whatever the bytes;
//! 2. a refusal is a 4xx, and what it leaves for the ledger row (`partial`
//!    model and end user) is storable: no control characters, bounded;
//! 3. an accepted request's values that reach a row or a query are storable
//!    and bounded, its forwarded body is a JSON object without the platform
//!    fields, and `body_for` with the request's own model returns that body;
//! 4. every override's checks either pass with storable values or refuse
//!    with a 4xx naming the fallback, and the effective body of one that
//!    passed (the only kind ever sent) is a JSON object.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::config::UnsupportedTools;
use tollgate::proxy::request::{parse_create, Fallback};
use tollgate::proxy::validate::{BodyFacts, MAX_END_USER_CHARS, MAX_ID_CHARS, MAX_MODEL_CHARS};

fn storable(value: &str, max: usize) {
    assert!(
        !value.chars().any(char::is_control),
        "control char in {value:?}"
    );
    assert!(
        value.chars().count() <= max,
        "{} chars > {max}",
        value.chars().count()
    );
}

fn check_facts(facts: &BodyFacts) {
    if let Some(user) = &facts.end_user {
        storable(user, MAX_END_USER_CHARS);
    }
    for id in [&facts.previous_response_id, &facts.conversation]
        .into_iter()
        .flatten()
    {
        storable(id, MAX_ID_CHARS);
    }
}

fn json_object_without_platform_fields(body: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(body).expect("forwarded body is JSON");
    let object = value.as_object().expect("forwarded body is an object");
    assert!(!object.contains_key("turing_options") && !object.contains_key("tags"));
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let request = match parse_create(&body, "turing/", UnsupportedTools::Drop) {
        Ok(request) => request,
        Err(rejection) => {
            assert!(
                rejection.error.status.is_client_error(),
                "{:?}",
                rejection.error.status
            );
            if let Some(model) = &rejection.partial.model {
                storable(model, MAX_MODEL_CHARS);
            }
            if let Some(user) = &rejection.partial.end_user {
                storable(user, MAX_END_USER_CHARS);
            }
            return;
        }
    };
    storable(&request.model, MAX_MODEL_CHARS);
    check_facts(&request.facts);
    json_object_without_platform_fields(&request.body);
    assert_eq!(
        request.body_for(&request.model, &[]).ok(),
        Some(request.body.clone())
    );
    for (i, fallback) in request.options.fallbacks.iter().enumerate() {
        let (model, fields) = match fallback {
            Fallback::Model(model) => (model, &[][..]),
            Fallback::Override { model, fields } => (model, &fields[..]),
            Fallback::Auto => continue,
        };
        storable(model, MAX_MODEL_CHARS);
        let prefix = format!("turing_options.fallbacks[{i}]");
        match request.fallback_facts(fields, &prefix) {
            Ok(facts) => check_facts(&facts),
            Err(err) => {
                assert!(err.status.is_client_error());
                assert!(err.param.as_deref().is_some_and(|p| p.starts_with(&prefix)));
                // A refused fallback is never sent, so its body is not built.
                continue;
            }
        }
        let effective = request
            .body_for(model, fields)
            .expect("override body assembles");
        json_object_without_platform_fields(&effective);
    }
});
