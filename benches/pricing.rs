//! The pricing step of a request, in isolation: finding the version in force
//! in the in-memory `PriceBook` and computing the exact cost. No database is
//! involved on this path (the book is reloaded off the request path).
//!
//! Run: `cargo bench --bench pricing`. The table is realistic and then some:
//! the bundled `config/prices.json` (14 OpenAI models) plus 1,000 fine-tune
//! style models, every model with 12 historical versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chrono::{Duration, Utc};
use criterion::{criterion_group, criterion_main, Criterion};

use tollgate::pricing::cost::cost;
use tollgate::pricing::litellm::parse_litellm;
use tollgate::pricing::{PriceBook, PriceVersion};
use tollgate::usage::Usage;

const VERSIONS_PER_MODEL: i64 = 12;
const EXTRA_MODELS: usize = 1_000;

fn book() -> PriceBook {
    let report = parse_litellm(include_str!("../config/prices.json")).unwrap();
    let now = Utc::now();
    let mut versions = Vec::new();
    let mut id = 0;
    let models = report
        .imported
        .iter()
        .map(|m| (m.model.clone(), &m.sheet))
        .chain((0..EXTRA_MODELS).map(|i| {
            let base = &report.imported[i % report.imported.len()];
            (format!("ft:{}:acme:{i}", base.model), &base.sheet)
        }));
    for (model, sheet) in models {
        for age in (0..VERSIONS_PER_MODEL).rev() {
            id += 1;
            versions.push(PriceVersion {
                id,
                model: model.clone(),
                effective_from: now - Duration::days(30 * age + 1),
                sheet: Some(sheet.clone()),
                currency: sheet.currency().to_owned(),
                created_at: now,
                created_by: "bench".to_owned(),
            });
        }
    }
    PriceBook::from_versions(versions)
}

fn pricing(c: &mut Criterion) {
    let book = book();
    let now = Utc::now();
    let usage = Usage {
        input_tokens: 1_200,
        cached_tokens: 200,
        output_tokens: 900,
        reasoning_tokens: 600,
        total_tokens: 2_100,
    };
    let long = Usage {
        input_tokens: 300_000,
        cached_tokens: 50_000,
        output_tokens: 2_000,
        reasoning_tokens: 1_500,
        total_tokens: 302_000,
    };
    // Sanity: the figures below price something real.
    let sheet = book.lookup("gpt-5.5", now).unwrap().sheet.clone().unwrap();
    assert_eq!(
        cost(&sheet, &usage, Some("default")).unwrap().to_string(),
        "0.0321"
    );
    let mini = book.lookup("gpt-5.4-mini", now).unwrap();
    assert!(cost(mini.sheet.as_ref().unwrap(), &usage, Some("priority")).is_ok());

    c.bench_function("lookup", |b| {
        b.iter(|| book.lookup(black_box("gpt-5.5"), black_box(now)))
    });
    c.bench_function("cost/default", |b| {
        b.iter(|| {
            cost(
                black_box(&sheet),
                black_box(&usage),
                black_box(Some("default")),
            )
        })
    });
    c.bench_function("cost/flex", |b| {
        b.iter(|| {
            cost(
                black_box(&sheet),
                black_box(&usage),
                black_box(Some("flex")),
            )
        })
    });
    c.bench_function("cost/long_context", |b| {
        b.iter(|| {
            cost(
                black_box(&sheet),
                black_box(&long),
                black_box(Some("default")),
            )
        })
    });
    // The request path: lookup at the request's start, cost at its end.
    c.bench_function("lookup+cost", |b| {
        b.iter(|| {
            let version = book.lookup(black_box("gpt-5.4-mini"), black_box(now))?;
            cost(
                version.sheet.as_ref()?,
                black_box(&usage),
                black_box(Some("priority")),
            )
            .ok()
        })
    });
}

criterion_group!(benches, pricing);
criterion_main!(benches);
