//! Nothing lost: fault tests that count requests sent against ledger rows and
//! compare every row's tokens with what the upstream reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{gpt55_price, GatewayProcess, TestGateway};
use serde_json::json;
use sqlx::PgPool;
use tollgate::ledger::LedgerRow;

/// The response id announced by `response.created` in the first chunk(s).
async fn read_created_id(response: &mut reqwest::Response) -> String {
    let mut seen = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("stream ended before response.created");
        seen.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&seen);
        if let Some(start) = text.find("\"id\":\"resp_") {
            let rest = &text[start + 6..];
            if let Some(end) = rest.find('"') {
                return rest[..end].to_owned();
            }
        }
    }
}

#[sqlx::test]
async fn concurrent_streams_with_random_disconnects_all_carry_the_real_usage(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;

    const STREAMS: usize = 200;
    // Every 4th stream's client walks away after the first event: 50 of 200.
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let request = gw
            .http
            .post(gw.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&json!({
                "model": "gpt-5.5", "input": "x", "stream": true,
                "metadata": {"mock_usage": format!("{},0,{},0", 100 + i, 10 + i),
                             "mock_deltas": "8", "mock_delay_ms": "15"}
            }));
        tasks.push(tokio::spawn(async move {
            let mut response = request.send().await.unwrap();
            let id = read_created_id(&mut response).await;
            if i % 4 == 0 {
                drop(response);
            } else {
                while response.chunk().await.unwrap().is_some() {}
            }
            (id, i)
        }));
    }
    let mut expected: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (id, i) = task.await.unwrap();
        expected.insert(id, i);
    }

    let rows = gw.rows(STREAMS).await;
    assert_eq!(rows.len(), STREAMS, "one row per request");
    let mut disconnected = 0;
    for row in &rows {
        let i = expected[row.response_id.as_deref().unwrap()];
        assert_eq!(row.status, "completed", "{row:?}");
        assert_eq!(row.usage_source, "reported");
        assert_eq!(
            (row.input_tokens, row.output_tokens),
            (100 + i as i64, 10 + i as i64)
        );
        assert!(row.cost.is_some());
        if row.client_disconnected {
            disconnected += 1;
            assert_eq!(i % 4, 0);
        }
    }
    assert_eq!(disconnected, STREAMS / 4);
}

#[sqlx::test]
async fn upstream_faults_leave_one_flagged_row_each(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;
    let scenarios = [
        (
            "garbage",
            json!({"mock_garbage": "1", "mock_usage": "7,0,3,0"}),
            true,
        ),
        (
            "error_event",
            json!({"mock_error_event": "1", "mock_usage": "7,0,3,0"}),
            true,
        ),
        (
            "error_event_unstored",
            json!({"mock_error_event": "1"}),
            false,
        ),
        (
            "cut",
            json!({"mock_cut_after": "3", "mock_delay_ms": "5", "mock_usage": "7,0,3,0"}),
            true,
        ),
    ];
    for (name, metadata, store) in &scenarios {
        let response = gw
            .create(&key, json!({"model": "gpt-5.5", "input": name, "stream": true, "store": store, "metadata": metadata}))
            .await;
        let _ = response.bytes().await;
    }
    let rows = gw.rows(scenarios.len()).await;
    assert_eq!(rows.len(), scenarios.len());
    let summary: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.status.as_str(),
                r.usage_source.as_str(),
                r.error_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            // Junk inside a non-lifecycle event does not disturb metering.
            ("completed", "reported", None),
            // The error event says what went wrong; the usage comes from the upstream's record.
            ("completed", "recovered", Some("server_error")),
            ("failed", "missing", Some("server_error")),
            ("completed", "recovered", Some("upstream_stream_error")),
        ]
    );
    assert_eq!(rows[2].cost, None);
    assert_eq!(rows[2].unpriced_reason.as_deref(), Some("usage_missing"));
    for row in [&rows[0], &rows[1], &rows[3]] {
        // 7*0.000005 + 3*0.00003
        assert_eq!(row.cost, Some("0.000125".parse().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_loses_and_duplicates_nothing() {
    let cluster = tokio::task::spawn_blocking(tollgate::pgtemp::TempCluster::start)
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL cluster (initdb/pg_ctl) is needed");
    let config = tollgate::config::Config {
        database_url: cluster.url(),
        ..Default::default()
    };
    let pool = tollgate::state::connect(&config).await.unwrap();
    tollgate::state::migrate(&pool).await.unwrap();
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;

    let send = |i: usize| {
        gw.http
            .post(gw.url("/v1/responses"))
            .bearer_auth(&key)
            .json(&json!({
                "model": "gpt-5.5", "input": "x", "stream": i % 2 == 0,
                "metadata": {"mock_usage": format!("{i},0,1,0")}
            }))
    };
    let mut sent = 0;
    let started = Instant::now();
    let mut stopped_at = None;
    let mut restarted = false;
    let mut spooled_during_outage = None;
    while started.elapsed() < Duration::from_secs(16) {
        if stopped_at.is_none() && started.elapsed() > Duration::from_secs(2) {
            let c = &cluster;
            c.stop().unwrap();
            stopped_at = Some(Instant::now());
        }
        if let Some(at) = stopped_at {
            if spooled_during_outage.is_none() && at.elapsed() > Duration::from_secs(6) {
                let stats = gw.state.ledger.stats();
                spooled_during_outage = Some((
                    stats.spooled.load(std::sync::atomic::Ordering::Relaxed),
                    stats.queued.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
            if !restarted && at.elapsed() > Duration::from_secs(10) {
                cluster.start_again().unwrap();
                restarted = true;
            }
        }
        let mut batch = Vec::new();
        for _ in 0..10 {
            sent += 1;
            batch.push(send(sent).send());
        }
        for response in futures_util::future::join_all(batch).await {
            let response = response.unwrap();
            assert_eq!(
                response.status(),
                200,
                "requests are served while the database is down"
            );
            response.bytes().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restarted);
    // While the database is away, rows reach the fsync'd spool within about a
    // second instead of waiting in memory.
    let (spooled, queued) = spooled_during_outage.unwrap();
    println!("6 s into the outage: {spooled} rows spooled, {queued} waiting in memory");
    assert!(spooled > 0);

    // Everything spooled during the outage is replayed, exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows: Vec<LedgerRow>;
    loop {
        gw.state.ledger.flush().await;
        rows = sqlx::query_as(&format!(
            "SELECT {} FROM usage_ledger",
            tollgate::ledger::COLUMNS
        ))
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        if rows.len() >= sent || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "database outage of 10 s: {sent} requests sent, {} rows stored, {} insert failures spooled",
        rows.len(),
        gw.state
            .ledger
            .stats()
            .write_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(rows.len(), sent, "zero rows lost");
    let mut inputs: Vec<i64> = rows.iter().map(|r| r.input_tokens).collect();
    inputs.sort_unstable();
    assert_eq!(
        inputs,
        (1..=sent as i64).collect::<Vec<_>>(),
        "each request once, with its own usage"
    );
    let stats = gw.state.ledger.stats();
    assert!(
        stats
            .write_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "the outage was real"
    );
    assert_eq!(stats.spooled.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[sqlx::test]
async fn sigterm_drains_open_streams_and_records_every_one(pool: PgPool) {
    let gateway = GatewayProcess::start(&pool, "drain_deadline_secs = 8").await;
    let (http, base, key) = (
        gateway.http.clone(),
        gateway.base.clone(),
        gateway.key.clone(),
    );

    const STREAMS: usize = 100;
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let request = http.post(format!("{base}/v1/responses")).bearer_auth(&key).json(&json!({
            "model": "turing/gpt-5.5", "input": "x", "stream": true,
            // ~3 s per stream: still open when SIGTERM arrives, done before the deadline.
            "metadata": {"mock_usage": format!("{},0,5,0", i + 1), "mock_deltas": "30", "mock_delay_ms": "100"}
        }));
        tasks.push(tokio::spawn(async move {
            let mut response = request.send().await.unwrap();
            read_created_id(&mut response).await;
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
            }
            String::from_utf8_lossy(&body).contains("response.completed")
        }));
    }
    // Let every stream open, then ask the gateway to stop.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    // New connections are refused while the open streams finish.
    let mut completed = 0;
    for task in tasks {
        if task.await.unwrap() {
            completed += 1;
        }
    }
    let exit = gateway.wait().await;
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(8 + 3),
        "exited within the drain deadline"
    );
    assert_eq!(completed, STREAMS, "open streams were allowed to finish");

    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, input_tokens FROM usage_ledger")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), STREAMS, "every row written before exit");
    assert!(rows.iter().all(|(status, _)| status == "completed"));
    let mut inputs: Vec<i64> = rows.iter().map(|(_, n)| *n).collect();
    inputs.sort_unstable();
    assert_eq!(inputs, (1..=STREAMS as i64).collect::<Vec<_>>());
}

/// SIGKILL gives no chance to flush: rows still in the writer's queue are
/// lost. This measures that window: every request that ended more than the
/// window before the kill must be in the ledger.
#[sqlx::test]
async fn sigkill_loses_only_rows_of_the_last_moments(pool: PgPool) {
    let gateway = GatewayProcess::start(&pool, "").await;
    let (http, base, key) = (
        gateway.http.clone(),
        gateway.base.clone(),
        gateway.key.clone(),
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (http, base, key, stop) = (http.clone(), base.clone(), key.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = http
                    .post(format!("{base}/v1/responses"))
                    .bearer_auth(&key)
                    .json(&json!({"model": "gpt-5.5", "input": "x"}))
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                let id = response.headers()["x-tollgate-request-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                if response.bytes().await.is_ok() {
                    done.push((id, Instant::now()));
                }
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    gateway.signal("KILL");
    gateway.wait().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut completed = Vec::new();
    for worker in workers {
        completed.extend(worker.await.unwrap());
    }
    let stored: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT request_id FROM usage_ledger")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let lost: Vec<Duration> = completed
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .map(|(_, ended)| killed_at.saturating_duration_since(*ended))
        .collect();
    let window = lost.iter().max().copied().unwrap_or_default();
    println!(
        "SIGKILL after {} completed requests: {} rows lost, all of requests that ended within {:?} of the kill",
        completed.len(),
        lost.len(),
        window
    );
    assert!(completed.len() > 100, "the load was real");
    assert!(
        window < Duration::from_millis(500),
        "a row older than one batch window was lost: {window:?}"
    );
}
