//! The real .wasm components, hosted by wasmtime, driven over real HTTP, with
//! a real bridge and RabbitMQ behind the producer.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use testkit::admin::MetricSource;
use testkit::amqp::{Inspector, unique_queue};
use testkit::bridge::RunningBridge;
use testkit::wasm;

/// Serves the producer against `bridge`'s publish API.
async fn producer_for(bridge: &RunningBridge) -> Result<wasm::ServedComponent> {
    wasm::serve(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", &bridge.publish_url("/v1/observe")),
        ],
    )
    .await
}

#[test]
fn components_import_only_wasi_interfaces() -> Result<()> {
    for name in ["producer", "worker"] {
        let imports = wasm::imports(name)?;
        assert!(!imports.is_empty(), "{name} imports nothing?");
        let foreign: Vec<_> = imports.iter().filter(|i| !i.starts_with("wasi:")).collect();
        assert!(
            foreign.is_empty(),
            "{name} imports non-WASI interfaces: {foreign:?}"
        );
        // The proxy world's outbound HTTP is only for the producer.
        let outbound = imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler"));
        assert_eq!(outbound, name == "producer", "{name}: {imports:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_answers_202_only_once_the_broker_holds_the_job() -> Result<()> {
    let queue = unique_queue("generate");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let producer = producer_for(&bridge).await?;
    let inspector = Inspector::connect().await?;
    let client = reqwest::Client::new();

    let get = client.get(producer.url("/generate")).send().await?;
    assert_eq!(get.status(), 202);
    let get_id = get.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let post = client
        .post(producer.url("/generate"))
        .header("content-type", "application/json")
        .body(r#"{"payload": {"image": "cat.png"}}"#)
        .send()
        .await?;
    assert_eq!(post.status(), 202);
    let post_id = post.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(get_id, post_id);

    // A 202 means confirmed, so both are in the queue already: no waiting.
    let messages = inspector.drain(&queue).await?;
    let jobs: Vec<job::Job> = messages
        .iter()
        .map(|m| job::Job::from_body(&m.data))
        .collect::<Result<_, _>>()?;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0].id, get_id);
    assert!(jobs[0].payload.is_none());
    assert_eq!(jobs[1].id, post_id);
    // Byte for byte as the client wrote it, spaces included.
    assert_eq!(
        jobs[1].payload.as_ref().map(|p| p.get()),
        Some(r#"{"image": "cat.png"}"#)
    );
    assert!(
        humantime::parse_rfc3339(&jobs[0].created_at).is_ok(),
        "{}",
        jobs[0].created_at
    );
    let message_id = messages[0]
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string);
    assert_eq!(message_id.as_deref(), Some(get_id.as_str()));

    // The bridge counts the producer's answers as it gives its verdicts.
    let labels = [("route", "/generate"), ("status", "202")];
    bridge
        .wait_metric(
            "host_bridge_producer_responses_total",
            &labels,
            2.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        bridge
            .metric(
                "host_bridge_producer_requests_total",
                &[("route", "/generate"), ("method", "POST")]
            )
            .await,
        1.0
    );
    assert_eq!(
        bridge
            .metric(
                "host_bridge_published_total",
                &[("queue", &queue), ("outcome", "confirmed")]
            )
            .await,
        2.0
    );
    inspector.delete_topology(&queue).await?;
    producer.shutdown().await;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_refuses_bad_input_with_json_errors_and_publishes_nothing() -> Result<()> {
    let queue = unique_queue("producer-bad");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let producer = producer_for(&bridge).await?;
    let inspector = Inspector::connect().await?;
    let client = reqwest::Client::new();
    let url = producer.url("/generate");
    let json = "application/json";
    let oversized = format!(r#"{{"payload": "{}"}}"#, "x".repeat(job::MAX_BODY_BYTES));

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "invalid JSON",
            client.post(&url).header("content-type", json).body("{nope"),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            client
                .post(&url)
                .header("content-type", json)
                .body(r#"{"pay": 1}"#),
            400,
            "invalid_json",
        ),
        (
            "non-UTF-8",
            client
                .post(&url)
                .header("content-type", json)
                .body(vec![b'"', 0xff, b'"']),
            400,
            "invalid_utf8",
        ),
        (
            "wrong content type",
            client
                .post(&url)
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong method",
            client.put(&url).body("{}"),
            405,
            "method_not_allowed",
        ),
        (
            "oversized",
            client
                .post(&url)
                .header("content-type", json)
                .body(oversized),
            413,
            "payload_too_large",
        ),
        (
            "unknown route",
            client.get(producer.url("/nope")),
            404,
            "not_found",
        ),
    ];
    let count = cases.len();
    for (what, request, status, code) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status, "{what}");
        if status == 405 {
            assert_eq!(response.headers()["allow"], "GET, POST", "{what}");
        }
        let body: job::ErrorBody = response.json().await?;
        assert_eq!(body.error, code, "{what}: {}", body.message);
        assert!(!body.message.is_empty(), "{what}");
    }
    // Every answer was reported, and nothing was published.
    bridge
        .wait_metric(
            "host_bridge_producer_requests_total",
            &[],
            count as f64,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(bridge.metric("host_bridge_published_total", &[]).await, 0.0);
    assert_eq!(inspector.ready(&queue).await?, 0);
    inspector.delete_topology(&queue).await?;
    producer.shutdown().await;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_takes_the_callers_id_and_any_body_within_the_stated_limit() -> Result<()> {
    let queue = unique_queue("generate-id");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let producer = producer_for(&bridge).await?;
    let inspector = Inspector::connect().await?;
    let client = reqwest::Client::new();
    let url = producer.url("/generate");
    let post = |body: String| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    // The idempotency key, by header and by body; a retry reuses it.
    let by_header = client
        .get(&url)
        .header("idempotency-key", "order-7:try")
        .send()
        .await?;
    assert_eq!(by_header.status(), 202);
    assert_eq!(by_header.json::<Value>().await?["id"], "order-7:try");
    let by_body = post(r#"{"id": "order-8", "payload": 1}"#.into())
        .send()
        .await?;
    assert_eq!(by_body.json::<Value>().await?["id"], "order-8");
    // Bad or conflicting keys are refused, and nothing is queued for them.
    let conflicting = post(r#"{"id": "a"}"#.into())
        .header("idempotency-key", "b")
        .send()
        .await?;
    assert_eq!(conflicting.status(), 400);
    assert_eq!(
        conflicting.json::<job::ErrorBody>().await?.error,
        "conflicting_ids"
    );
    // Non-ASCII is legal in a header value (obs-text) but not in an id.
    let accented = reqwest::header::HeaderValue::from_bytes("café".as_bytes())?;
    let hostile = client
        .get(&url)
        .header("idempotency-key", accented)
        .send()
        .await?;
    assert_eq!(hostile.status(), 400);
    assert_eq!(hostile.json::<job::ErrorBody>().await?.error, "invalid_job");
    let spaced = client
        .get(&url)
        .header("idempotency-key", "a b")
        .send()
        .await?;
    assert_eq!(spaced.status(), 400);
    assert_eq!(spaced.json::<job::ErrorBody>().await?.error, "invalid_job");

    // A body of exactly the stated limit is taken, and numbers are not
    // re-encoded on the way (`1e5` would grow to `100000.0`).
    let head = r#"{"payload": ["#;
    let item = "1e5,";
    let mut body = String::from(head);
    while body.len() + item.len() + "1e5]}".len() <= job::MAX_BODY_BYTES {
        body.push_str(item);
    }
    body.push_str("1e5]}");
    while body.len() < job::MAX_BODY_BYTES {
        body.insert(body.len() - 1, ' ');
    }
    assert_eq!(body.len(), job::MAX_BODY_BYTES);
    let full = post(body.clone()).send().await?;
    assert_eq!(full.status(), 202, "{}", full.text().await?);
    let one_more = post(format!("{body} ")).send().await?;
    assert_eq!(one_more.status(), 413);

    let jobs: Vec<job::Job> = inspector
        .drain(&queue)
        .await?
        .iter()
        .map(|m| job::Job::from_body(&m.data))
        .collect::<Result<_, _>>()?;
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(&ids[..2], ["order-7:try", "order-8"]);
    assert_eq!(jobs.len(), 3, "{ids:?}");
    let payload = jobs[2]
        .payload
        .as_ref()
        .map(|p| p.get())
        .unwrap_or_default();
    assert!(payload.starts_with("[1e5,1e5,") && !payload.contains("100000"));
    inspector.delete_topology(&queue).await?;
    producer.shutdown().await;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_answers_503_with_retry_after_when_the_bridge_is_down() -> Result<()> {
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let url = format!("http://{closed}/v1/publish");
    let producer = wasm::serve(
        "producer",
        &[("BRIDGE_PUBLISH_URL", &url), ("BRIDGE_OBSERVE_URL", &url)],
    )
    .await?;
    let response = reqwest::get(producer.url("/generate")).await?;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: job::ErrorBody = response.json().await?;
    assert_eq!(body.error, "bridge_unavailable");
    producer.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_does_the_work_and_refuses_what_it_cannot_parse() -> Result<()> {
    let worker = wasm::serve("worker", &[("WORK_DURATION_MS", "150")]).await?;
    let client = reqwest::Client::new();
    let job = r#"{"id": "job-1", "created_at": "2026-01-01T00:00:00Z"}"#;

    let done = client.post(worker.url("/work")).body(job).send().await?;
    assert_eq!(done.status(), 200);
    let result: job::WorkResult = done.json().await?;
    assert_eq!(result.id, "job-1");
    // It really waited (on a WASI clock) for the configured duration.
    assert!(result.worked_ms >= 150, "{result:?}");

    let poison = client
        .post(worker.url("/work"))
        .body("not a job")
        .send()
        .await?;
    assert_eq!(poison.status(), 400);
    assert_eq!(poison.json::<job::ErrorBody>().await?.error, "invalid_json");
    let no_id = client
        .post(worker.url("/work"))
        .body(r#"{"id": "", "created_at": ""}"#)
        .send()
        .await?;
    assert_eq!(no_id.status(), 400);
    let get = client.get(worker.url("/work")).send().await?;
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");

    // A bad setting is the worker's fault, not the job's: 5xx, so it is retried.
    let misconfigured = wasm::serve("worker", &[("WORK_DURATION_MS", "soon")]).await?;
    let response = client
        .post(misconfigured.url("/work"))
        .body(job)
        .send()
        .await?;
    assert_eq!(response.status(), 500);
    assert_eq!(response.json::<job::ErrorBody>().await?.error, "bad_config");
    Ok(())
}

/// Under the real `wasmtime serve` (what `make up` runs without spin), every
/// path but `/generate` and `GET /healthz` gets the producer's JSON 404, as
/// under `spin up` with the catch-all route (`spin_manifest.rs`); `/healthz`
/// answers without creating anything (the bridge's nearby publish URL is a
/// closed port, so a publish attempt would answer 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_get_a_json_404_under_wasmtime_serve() -> Result<()> {
    let producer = testkit::runtime::WasmtimeServe::start(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", "http://127.0.0.1:9/v1/publish"),
            ("BRIDGE_OBSERVE_URL", "off"),
        ],
    )
    .await?;
    for path in ["/", "/nope", "/generate/x", "/generatex", "/work"] {
        let response = reqwest::get(producer.url(path)).await?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    let health = reqwest::get(producer.url("/healthz")).await?;
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<serde_json::Value>().await?,
        serde_json::json!({ "ok": true })
    );
    let post = reqwest::Client::new()
        .post(producer.url("/healthz"))
        .send()
        .await?;
    assert_eq!(post.status(), 404, "only GET /healthz is the probe");
    Ok(())
}

/// Under `wasmtime serve` with `make up`'s flags, which reuse an instance
/// for many requests, each request is still answered as its own: ids never
/// carry over, a refused request leaves nothing behind for the next, and
/// every answer is counted once (the bridge counts the verdicts it gave,
/// the producer reports the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_answers_each_request_as_its_own_under_instance_reuse() -> Result<()> {
    assert!(
        testkit::runtime::SERVE_FLAGS.contains(&"--max-instance-reuse-count"),
        "this test is about instance reuse"
    );
    let queue = unique_queue("reuse");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let producer = testkit::runtime::WasmtimeServe::start(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", &bridge.publish_url("/v1/observe")),
        ],
    )
    .await?;
    // One keep-alive connection, one request at a time: the runtime hands
    // them to the same instance until its reuse count runs out.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let url = producer.url("/generate");
    let json = |body: String| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    let mut accepted = Vec::new();
    let mut statuses = std::collections::BTreeMap::<(&str, u16), f64>::new();
    let mut methods = std::collections::BTreeMap::<(&str, &str), f64>::new();
    for round in 0..4 {
        let chosen = format!("reuse-{queue}-{round}");
        let keyed = format!("key-{queue}-{round}");
        let cases: Vec<(&str, &str, reqwest::RequestBuilder, u16, Option<String>)> = vec![
            (
                "/generate",
                "POST",
                json(format!(r#"{{"id":"{chosen}"}}"#)),
                202,
                Some(chosen.clone()),
            ),
            ("/generate", "POST", json("{".into()), 400, None),
            ("/generate", "GET", client.get(&url), 202, None),
            (
                "/generate",
                "POST",
                json(r#"{"id":"other"}"#.into()).header("idempotency-key", &keyed),
                400,
                None,
            ),
            (
                "/generate",
                "POST",
                json("{}".into()).header("idempotency-key", &keyed),
                202,
                Some(keyed.clone()),
            ),
            ("/generate", "PUT", client.put(&url), 405, None),
            (
                "/generate",
                "POST",
                json(format!(r#"{{"payload":"{}"}}"#, "x".repeat(70_000))),
                413,
                None,
            ),
            ("other", "GET", client.get(producer.url("/nope")), 404, None),
        ];
        for (route, method, request, want, want_id) in cases {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            assert_eq!(status, want, "round {round}, {method} {route}: {body}");
            *statuses.entry((route, status)).or_default() += 1.0;
            *methods.entry((route, method)).or_default() += 1.0;
            if status != 202 {
                assert!(body["error"].is_string(), "a JSON error: {body}");
                continue;
            }
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            if let Some(want_id) = want_id {
                assert_eq!(id, want_id, "round {round}");
            }
            assert!(!accepted.contains(&id), "{id} was answered twice");
            accepted.push(id);
        }
    }
    // A bridge verdict other than 202, counted by the bridge alone: a
    // producer that waits 1 s gets 503 deadline_exceeded from a bridge
    // whose confirm wait is 5 s, and reports nothing itself.
    let impatient = testkit::runtime::WasmtimeServe::start(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", &bridge.publish_url("/v1/observe")),
            ("BRIDGE_TIMEOUT_MS", "1000"),
        ],
    )
    .await?;
    for _ in 0..3 {
        let response = client.get(impatient.url("/generate")).send().await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("deadline_exceeded")),
            "{body}"
        );
        *statuses.entry(("/generate", status)).or_default() += 1.0;
        *methods.entry(("/generate", "GET")).or_default() += 1.0;
    }

    // Exactly the accepted jobs are queued, in order.
    let inspector = Inspector::connect().await?;
    assert_eq!(inspector.drain_ids(&queue).await?, accepted);

    // Every answer counted once, however it was counted.
    let total: f64 = statuses.values().sum();
    let counted = || async {
        let mut sum = 0.0;
        for (route, status) in statuses.keys() {
            sum += bridge
                .metric(
                    "host_bridge_producer_responses_total",
                    &[("route", route), ("status", &status.to_string())],
                )
                .await;
        }
        sum
    };
    testkit::eventually("every answer counted", Duration::from_secs(10), || async {
        (counted().await >= total).then_some(())
    })
    .await;
    for ((route, status), n) in &statuses {
        assert_eq!(
            bridge
                .metric(
                    "host_bridge_producer_responses_total",
                    &[("route", route), ("status", &status.to_string())]
                )
                .await,
            *n,
            "{route} {status}"
        );
    }
    for ((route, method), n) in &methods {
        assert_eq!(
            bridge
                .metric(
                    "host_bridge_producer_requests_total",
                    &[("route", route), ("method", method)]
                )
                .await,
            *n,
            "{route} {method}"
        );
    }
    inspector.delete_topology(&queue).await?;
    bridge.stop().await;
    Ok(())
}
