//! One job is one trace: W3C trace context from the client's request
//! through the ingress, the producer component, the publish API, the AMQP
//! message, the consumer and the push, to the worker component's request,
//! with the bridges' spans exported over OTLP/HTTP to a receiver that
//! decodes them with OpenTelemetry's own protobuf types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use testkit::amqp::{Headers, Inspector, amqp_url, unique_queue};
use testkit::bridge::RunningBridge;
use testkit::otlp::{ReceivedSpan, Receiver};
use testkit::process::{BridgeProcess, free_ports};
use testkit::runtime::WasmtimeServe;
use testkit::{eventually, wasm};

/// OTLP's numbers for span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The `traceparent` the worker component was sent, from its request.
fn traceparent_of(answer: &wasm::Answer) -> String {
    answer
        .request_headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// (trace id, parent id) of a `traceparent`.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {traceparent:?}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The one span named `name` in `spans`.
fn the<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_from_the_request_to_the_worker() -> Result<()> {
    let queue = unique_queue("traces");
    let receiver = Receiver::start().await?;
    let endpoint = receiver.endpoint();
    let mut worker = wasm::serve("worker", &[("WORK_DURATION_MS", "10")]).await?;
    let worker_url = worker.url("/work");
    let consumer = BridgeProcess::spawn(
        &amqp_url(),
        &[
            "--roles",
            "consume",
            "--queue",
            &queue,
            "--worker-url",
            &worker_url,
            "--otlp-endpoint",
            &endpoint,
        ],
    )
    .await?;
    let [ingress_port, producer_port] = free_ports()?;
    let ingress = SocketAddr::from(([127, 0, 0, 1], ingress_port));
    let front = BridgeProcess::spawn(
        &amqp_url(),
        &[
            "--roles",
            "publish,ingress",
            "--queue",
            &queue,
            "--ingress-addr",
            &ingress.to_string(),
            "--producer-url",
            &format!("http://127.0.0.1:{producer_port}"),
            "--otlp-endpoint",
            &endpoint,
        ],
    )
    .await?;
    // The producer under the real `wasmtime serve`, as `make up` runs it.
    let producer = WasmtimeServe::producer_on(producer_port, front.publish_addr, &[]).await?;
    front.wait_ready().await;
    consumer.wait_ready().await;

    let client = reqwest::Client::new();
    let generate = format!("http://{ingress}/generate");
    // A client that sends a trace context, and one that does not: the
    // second job's trace starts at the ingress.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut ids_by_job = HashMap::new();
    for traced in [true, false] {
        let mut request = client.get(&generate);
        if traced {
            request = request
                .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
                .header("tracestate", "test=1");
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = response.json().await?;
        let id = body["id"].as_str().context("an id")?.to_owned();
        let answer = tokio::time::timeout(Duration::from_secs(30), worker.answers.recv())
            .await
            .context("no worker answer in 30 s")?
            .context("the worker stopped")?;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let result: job::WorkResult = serde_json::from_slice(&answer.body)?;
        assert_eq!(result.id, id);
        // The client's tracestate rides along with its trace, and only then.
        let state = answer
            .request_headers
            .get("tracestate")
            .and_then(|v| v.to_str().ok());
        assert_eq!(state, traced.then_some("test=1"));
        ids_by_job.insert(traced, (id, traceparent_of(&answer)));
    }

    for (traced, (id, worker_saw)) in &ids_by_job {
        let (trace_id, push_span) = ids(worker_saw);
        if *traced {
            assert_eq!(trace_id, client_trace, "the worker got another trace");
        }
        // Spans come in batches, a second apart.
        let spans = eventually("the job's four spans", Duration::from_secs(30), || {
            let spans = receiver.trace(&trace_id);
            async move { (spans.len() >= 4).then_some(spans) }
        })
        .await;
        let ingress = the(&spans, "ingress");
        let publish = the(&spans, "publish");
        let job = the(&spans, "job");
        let push = the(&spans, "push");
        println!(
            "traces: {} job {id}: ingress {} <- publish {} <- job {} <- push {} -> worker parent {push_span}",
            if *traced { "client-traced" } else { "new" },
            ingress.span_id,
            publish.span_id,
            job.span_id,
            push.span_id
        );
        let expected_root = if *traced { client_span } else { "" };
        assert_eq!(ingress.parent_span_id, expected_root, "{ingress:?}");
        assert_eq!(ingress.kind, SERVER);
        assert_eq!(publish.parent_span_id, ingress.span_id, "{publish:?}");
        assert_eq!(publish.kind, PRODUCER);
        assert_eq!(job.parent_span_id, publish.span_id, "{job:?}");
        assert_eq!(job.kind, CONSUMER);
        assert_eq!(push.parent_span_id, job.span_id, "{push:?}");
        assert_eq!(push.kind, CLIENT);
        assert_eq!(push_span, push.span_id, "the worker's parent is the push");
        // The job id is an attribute of the spans that know it.
        assert_eq!(publish.attributes.get("job.id"), Some(id));
        assert_eq!(job.attributes.get("job.id"), Some(id));
        assert_eq!(
            push.attributes
                .get("http.response.status_code")
                .map(String::as_str),
            Some("200")
        );
        assert_eq!(
            publish.attributes.get("messaging.destination.name"),
            Some(&queue.to_string())
        );
        assert!(
            spans.iter().all(|s| s.service == "host-bridge"),
            "{spans:#?}"
        );
    }
    // The job id is never a metric label.
    let (_, metrics) = front.admin("/metrics").await?;
    for (id, _) in ids_by_job.values() {
        assert!(!metrics.contains(id.as_str()), "{id} in the metrics");
    }

    drop(producer);
    drop(front);
    drop(consumer);
    Inspector::connect().await?.delete_topology(&queue).await?;
    Ok(())
}

/// Without an exporter the bridge makes no span, but carries the caller's
/// trace context into the message unchanged, for the next hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_callers_trace_context_rides_in_the_message() -> Result<()> {
    let queue = unique_queue("traces-pass");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = reqwest::Client::new()
        .post(bridge.publish_url("/v1/publish"))
        .header("content-type", "application/json")
        .header("traceparent", parent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .body(testkit::rig::job("pass-1", json!(null)))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    // A malformed one is not passed on: the next hop starts a trace.
    let response = reqwest::Client::new()
        .post(bridge.publish_url("/v1/publish"))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        )
        .body(testkit::rig::job("pass-2", json!(null)))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let inspector = Inspector::connect().await?;
    let messages = inspector.drain(&queue).await?;
    assert_eq!(messages.len(), 2);
    let first = Headers::of(&messages[0]);
    assert_eq!(first.text("traceparent"), parent);
    assert_eq!(first.text("tracestate"), "congo=t61rcWkgMzE");
    let second = Headers::of(&messages[1]);
    assert_eq!(second.text("traceparent"), "");
    assert_eq!(second.text("tracestate"), "");
    bridge.stop().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}
