//! host-bridge against the real RabbitMQ: the publish API's contract, the
//! consumer's acknowledgement table, readiness, metrics and graceful stop.
//! Faults that are the worker's are played by the stand-in worker.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use testkit::admin::MetricSource;
use testkit::amqp::{Inspector, unique_queue};
use testkit::bridge::RunningBridge;
use testkit::rig::{Rig, job, publish_to};

async fn publish(bridge: &RunningBridge, body: String) -> Result<reqwest::Response> {
    publish_to(&bridge.publish_url("/v1/publish"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_api_accepts_chunked_bodies_and_bounds_them() -> Result<()> {
    let queue = unique_queue("chunked");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let inspector = Inspector::connect().await?;
    let client = reqwest::Client::new();
    let url = bridge.publish_url("/v1/publish");

    // A streamed body has no Content-Length: it goes out chunked, as a
    // spin-sdk component's outbound POST does under `spin up`.
    let chunked = |parts: Vec<Vec<u8>>| {
        reqwest::Body::wrap_stream(futures::stream::iter(
            parts.into_iter().map(Ok::<_, std::io::Error>),
        ))
    };
    let body = job("chunked-1", json!({"n": 1})).into_bytes();
    let (head, tail) = body.split_at(10);
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(chunked(vec![head.to_vec(), tail.to_vec()]))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await?["id"], "chunked-1");

    // Over the limit, streamed: refused without a Content-Length to go by.
    let big = vec![b' '; job::MAX_JOB_BYTES / 4];
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(chunked(vec![
            big.clone(),
            big.clone(),
            big.clone(),
            big.clone(),
            b"{}".to_vec(),
        ]))
        .send()
        .await?;
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<job::ErrorBody>().await?.error,
        "payload_too_large"
    );

    let messages = inspector.drain(&queue).await?;
    assert_eq!(messages.len(), 1, "only the valid job is queued");
    assert_eq!(job::Job::from_body(&messages[0].data)?.id, "chunked-1");
    inspector.delete_topology(&queue).await?;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_api_refuses_bad_input_with_json_errors() -> Result<()> {
    let queue = unique_queue("publish-bad");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let client = reqwest::Client::new();
    let url = bridge.publish_url("/v1/publish");
    let json = "application/json";
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "invalid JSON",
            client.post(&url).header("content-type", json).body("{"),
            400,
            "invalid_json",
        ),
        (
            "not a job",
            client
                .post(&url)
                .header("content-type", json)
                .body(r#"{"x": 1}"#),
            400,
            "invalid_json",
        ),
        (
            "empty id",
            client
                .post(&url)
                .header("content-type", json)
                .body(job("", json!(null))),
            400,
            "invalid_job",
        ),
        (
            "non-UTF-8",
            client
                .post(&url)
                .header("content-type", json)
                .body(vec![b'{', 0xc3, 0x28]),
            400,
            "invalid_utf8",
        ),
        (
            "wrong content type",
            client
                .post(&url)
                .header("content-type", "text/csv")
                .body("a,b"),
            415,
            "unsupported_media_type",
        ),
        ("wrong method", client.get(&url), 405, "method_not_allowed"),
        (
            "unknown route",
            client.post(bridge.publish_url("/v2/x")),
            404,
            "not_found",
        ),
    ];
    for (what, request, status, code) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: job::ErrorBody = response.json().await?;
        assert_eq!(body.error, code, "{what}: {}", body.message);
    }
    assert_eq!(bridge.metric("host_bridge_published_total", &[]).await, 0.0);
    let inspector = Inspector::connect().await?;
    assert_eq!(inspector.ready(&queue).await?, 0);
    inspector.delete_topology(&queue).await?;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_acks_dead_letters_and_requeues_by_the_workers_answer() -> Result<()> {
    let mut rig = Rig::start("outcomes", &[]).await?;
    for (id, answers) in [
        ("ok", json!([200])),
        ("poison", json!([400])),
        ("flaky", json!([500, 200])),
    ] {
        let response = rig.publish(id, json!({ "answers": answers })).await?;
        assert_eq!(response.status(), 202, "{id}");
    }
    let mut pushes = Vec::new();
    for _ in 0..4 {
        let push = rig.worker.next_push(Duration::from_secs(20)).await;
        pushes.push((push.id, push.attempt, push.status));
    }
    pushes.sort();
    let expected = [
        ("flaky", 1, 500),
        ("flaky", 2, 200),
        ("ok", 1, 200),
        ("poison", 1, 400),
    ];
    assert_eq!(pushes, expected.map(|(id, n, s)| (id.to_owned(), n, s)));
    rig.wait_jobs("acked", 2.0, Duration::from_secs(10)).await;
    // The 500 was retried in place: no delivery spent, nothing requeued.
    assert_eq!(rig.jobs("requeued").await, 0.0);
    let retried = rig
        .bridge
        .metric("host_bridge_push_retries_total", &[("reason", "failed")])
        .await;
    assert_eq!(retried, 1.0);
    assert_eq!(rig.jobs("dead_lettered").await, 1.0);

    // The poison job is in the dead-letter queue, once, and nothing is left.
    let dead_queue = format!("{}.dead", rig.queue);
    let dead = testkit::eventually(
        "the poison job in the dead-letter queue",
        Duration::from_secs(10),
        || async {
            let dead = rig.inspector.drain(&dead_queue).await.ok()?;
            (!dead.is_empty()).then_some(dead)
        },
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(job::Job::from_body(&dead[0].data)?.id, "poison");
    let headers = testkit::amqp::Headers::of(&dead[0]);
    assert_eq!(headers.text("x-dead-reason"), "worker_refused");
    assert_eq!(headers.text("x-dead-worker-answer"), "400");
    // The job's own properties travel too.
    assert_eq!(
        dead[0].properties.message_id().as_ref().map(|m| m.as_str()),
        Some("poison")
    );
    assert_eq!(rig.inspector.ready(&rig.queue).await?, 0);
    rig.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_prompt_503_while_the_broker_is_unreachable() -> Result<()> {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let amqp = format!("amqp://guest:guest@{closed}/%2f");
    let bridge =
        RunningBridge::start(&["--amqp-url", &amqp, "--queue", &unique_queue("down")]).await?;
    let (status, body) = bridge.admin("/readyz").await?;
    assert_eq!(status, 503);
    assert!(body.contains("not connected"), "{body}");
    assert_eq!(bridge.admin("/healthz").await?.0, 200);

    let response = publish(&bridge, job("j", json!(null))).await?;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.json::<job::ErrorBody>().await?.error,
        "broker_unavailable"
    );
    assert_eq!(
        bridge
            .metric("host_bridge_published_total", &[("outcome", "refused")])
            .await,
        1.0
    );
    // One meaning each: the refusal is counted once more only as its
    // reason, and a publish never sent is not a broker latency.
    assert_eq!(
        bridge
            .metric(
                "host_bridge_publish_refusals_total",
                &[("reason", "broker_unavailable")]
            )
            .await,
        1.0
    );
    assert_eq!(
        bridge
            .metric("host_bridge_publish_duration_seconds_count", &[])
            .await,
        0.0
    );
    // No depth was ever read: no series, rather than a 0 nobody measured.
    let (_, text) = bridge.admin("/metrics").await?;
    assert!(
        !text.contains("host_bridge_queue_ready_messages{"),
        "{text}"
    );
    assert_eq!(bridge.metric("host_bridge_broker_up", &[]).await, 0.0);
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_the_job_in_flight_and_acks_it_once() -> Result<()> {
    let Rig {
        queue,
        mut worker,
        mut bridge,
        inspector,
    } = Rig::start("drain", &["--shutdown-grace", "20s"]).await?;
    let response = publish_to(
        &bridge.publish_url("/v1/publish"),
        job("slow", json!({"delays_ms": [1500]})),
    )
    .await?;
    assert_eq!(response.status(), 202);
    bridge
        .wait_metric(
            "host_bridge_jobs_in_flight",
            &[],
            1.0,
            Duration::from_secs(10),
        )
        .await;

    // What SIGTERM does: stop taking work, drain, close.
    let stopping = std::time::Instant::now();
    bridge.begin_stop();
    let push = worker.next_push(Duration::from_secs(20)).await;
    assert_eq!(
        (push.id.as_str(), push.attempt, push.status),
        ("slow", 1, 200)
    );
    let metrics = bridge.metrics.clone();
    bridge.join().await;
    // It stopped because the work was done, not because the deadline passed.
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopping.elapsed()
    );
    let acked = testkit::metric_value(
        &metrics.encode(),
        "host_bridge_jobs_total",
        &[("outcome", "acked")],
    );
    assert_eq!(acked, 1.0, "acked before the bridge stopped");

    // Acked exactly once: nothing returned to the queue, no second push.
    assert_eq!(inspector.ready(&queue).await?, 0);
    assert!(worker.pushes.try_recv().is_err());
    inspector.delete_topology(&queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_documented_families() -> Result<()> {
    let rig = Rig::start("metrics", &[]).await?;
    assert_eq!(rig.publish("m", json!(null)).await?.status(), 202);
    rig.bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &[("outcome", "acked")],
            1.0,
            Duration::from_secs(10),
        )
        .await;
    let text = rig.bridge.scrape().await?;
    for family in [
        "host_bridge_published_total",
        "host_bridge_jobs_total",
        "host_bridge_publish_duration_seconds_bucket",
        "host_bridge_job_duration_seconds_bucket",
        "host_bridge_jobs_in_flight",
        "host_bridge_queue_ready_messages",
        "host_bridge_broker_up",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} missing:\n{text}"
        );
    }
    let ready = format!(
        r#"host_bridge_queue_ready_messages{{queue="{}"}}"#,
        rig.queue
    );
    assert!(text.contains(&ready), "{text}");
    assert_eq!(rig.bridge.metric("host_bridge_broker_up", &[]).await, 1.0);
    rig.finish().await
}

/// Every bad setting exits 64 with one line naming it, whether clap or
/// `validate()` catches it; `--help` and `--version` exit 0. The real
/// binary, run as Kubernetes would, with settings in the environment.
#[test]
fn a_bad_setting_exits_64_with_one_line_and_help_exits_0() -> Result<()> {
    let bridge = testkit::process::bridge_binary();
    let otlp = "http://127.0.0.1:4318";
    for (settings, names) in [
        (&[("PUBLISH_TIMEOUT", "5")][..], "--publish-timeout"),
        (&[("CONCURRENCY", "abc")], "--concurrency"),
        (&[("BRIDGE_ROLES", "bogus")], "--roles"),
        (&[("CONCURRENCY", "0")], "--concurrency"),
        (&[("WORKER_URL", "https://127.0.0.1:3001/")], "--worker-url"),
        (&[("PRODUCER_URL", "http://127.0.0.1/x")], "--producer-url"),
        (
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            "--otlp-endpoint",
        ),
        (
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ] {
        let mut command = std::process::Command::new(&bridge);
        command.env("BRIDGE_ROLES", "publish,consume,ingress");
        command.envs(settings.iter().copied());
        let output = command.output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{settings:?}: exit {:?}: {stderr}", output.status.code());
        assert_eq!(output.status.code(), Some(64), "{settings:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{settings:?}: {stderr}"
        );
        assert!(stderr.contains(names), "{settings:?}: {stderr}");
    }
    for flag in ["--help", "--version"] {
        let output = std::process::Command::new(&bridge).arg(flag).output()?;
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert!(!output.stdout.is_empty(), "{flag}");
    }
    Ok(())
}

/// The encodings a log line could carry `secret` in: as text, as the byte
/// list a `Debug` of a frame prints (`[0, 103, 117, …]`), hex and base64,
/// of the password alone and of the SASL PLAIN response (`\0user\0pass`).
fn encodings(user: &str, secret: &str) -> Vec<String> {
    let sasl = format!("\0{user}\0{secret}");
    let mut forms = vec![secret.to_owned()];
    for bytes in [secret.as_bytes(), sasl.as_bytes()] {
        let decimal: Vec<String> = bytes.iter().map(u8::to_string).collect();
        forms.push(decimal.join(", "));
        forms.push(decimal.join(","));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        forms.push(hex.clone());
        forms.push(hex.to_uppercase());
        forms.push(testkit::base64(bytes));
    }
    forms
}

/// No credential at any log level: the real binary at `RUST_LOG=trace`
/// connects (and is refused, the password being wrong) a few times, and
/// nothing it printed holds the password in any encoding above. lapin logs
/// the `Connection.StartOk` frame at trace, whose SASL response is
/// `\0user\0password` as a byte list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_in_the_logs_even_at_trace() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let secret = format!("pw-{}-sEcReT", std::process::id());
    let [admin] = testkit::process::free_ports()?;
    let mut child = tokio::process::Command::new(testkit::process::bridge_binary())
        .env("AMQP_URL", testkit::amqp::amqp_url())
        .env("AMQP_PASSWORD", &secret)
        .env("BRIDGE_ROLES", "publish")
        .env("PUBLISH_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut log = String::new();
    let mut refusals = 0;
    // Until the broker has refused the login twice: each attempt sent the
    // password, and lapin logged the frames around it.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("broker unavailable") {
                refusals += 1;
            }
            log.push_str(&line);
            log.push('\n');
            if refusals >= 2 {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no two refused logins in 30 s"))??;
    child.start_kill()?;
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut lines.into_inner(), &mut rest).await?;
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(stdout), &mut out)
        .await?;
    log.push_str(&rest);
    log.push_str(&out);
    let user = "guest";
    // The log is real trace output: lapin's frames are in it.
    assert!(log.contains("TRACE"), "not a trace log");
    println!(
        "trace log: {} lines, {} bytes, {refusals} refused logins",
        log.lines().count(),
        log.len()
    );
    for form in encodings(user, &secret) {
        assert!(
            !log.contains(&form),
            "the password is in the trace log as {form:?}"
        );
    }
    Ok(())
}

/// The wait every job pays, measured against waits known in advance: three
/// jobs queued at once behind a worker that takes 1 s each, one at a time,
/// wait about 0, 1 and 2 s in the queue (3 s in all), run 1 s each, and
/// are done about 1, 2 and 3 s after their publish (6 s in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_wait_run_and_end_to_end_histograms_match_known_waits() -> Result<()> {
    let rig = Rig::start("waits", &["--concurrency", "1"]).await?;
    for n in 0..3 {
        let response = rig
            .publish(&format!("wait-{n}"), json!({ "delays_ms": [1000] }))
            .await?;
        assert_eq!(response.status(), 202);
    }
    rig.wait_jobs("acked", 3.0, Duration::from_secs(20)).await;
    let bridge = &rig.bridge;
    let read = |name: &'static str| async move {
        let count = bridge.metric(&format!("{name}_count"), &[]).await;
        let sum = bridge.metric(&format!("{name}_sum"), &[]).await;
        (count, sum)
    };
    let wait = read("host_bridge_job_queue_wait_seconds").await;
    let run = read("host_bridge_job_run_seconds").await;
    let end_to_end = read("host_bridge_job_end_to_end_seconds").await;
    println!(
        "waits: queue wait {:.2} s over {} jobs (expected about 3), run {:.2} s (about 3), \
         end to end {:.2} s (about 6)",
        wait.1, wait.0, run.1, end_to_end.1
    );
    assert_eq!((wait.0, run.0, end_to_end.0), (3.0, 3.0, 3.0));
    assert!((2.9..4.5).contains(&wait.1), "queue wait {}", wait.1);
    assert!((3.0..4.0).contains(&run.1), "run {}", run.1);
    assert!(
        (5.9..8.0).contains(&end_to_end.1),
        "end to end {}",
        end_to_end.1
    );
    rig.finish().await
}
