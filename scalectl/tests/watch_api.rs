//! `scalectl watch` gathering and rendering, through a real `kube::Client`
//! against a local HTTP server that serves recorded Kubernetes API JSON of
//! the real shapes (HPA autoscaling/v2, Deployment apps/v1, Events).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use scalectl::watch::{Sources, Watcher, csv, render, svg};
use serde_json::{Value, json};

const NS: &str = "wasm-jobs";

fn hpa(desired: i32, current: i32, average: &str) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "worker", "namespace": NS, "resourceVersion": "1201", "uid": "6f1c2f0e-1"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
            "minReplicas": 1, "maxReplicas": 20,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "rabbitmq_queue_messages", "selector": {"matchLabels": {"queue": "jobs"}}},
                "target": {"type": "AverageValue", "averageValue": "5"}}}]
        },
        "status": {
            "currentReplicas": current, "desiredReplicas": desired,
            "lastScaleTime": "2026-11-29T10:00:15Z",
            "currentMetrics": [{"type": "External", "external": {
                "metric": {"name": "rabbitmq_queue_messages", "selector": {"matchLabels": {"queue": "jobs"}}},
                "current": {"averageValue": average}}}],
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededRescale", "lastTransitionTime": "2026-11-29T10:00:15Z"},
                {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "lastTransitionTime": "2026-11-29T09:00:00Z"},
                {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange", "lastTransitionTime": "2026-11-29T09:00:00Z"}
            ]
        }
    })
}

fn deployment(replicas: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "worker", "namespace": NS, "generation": 7},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "worker"}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": "worker"}},
                              "spec": {"containers": [{"name": "worker", "image": "w"}]}}},
        "status": {"observedGeneration": 7, "replicas": replicas, "updatedReplicas": replicas,
                   "readyReplicas": ready, "availableReplicas": ready}
    })
}

fn events() -> Value {
    let event = |name: &str, kind: &str, reason: &str, message: &str, at: &str| {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{at}"), "namespace": NS},
            "involvedObject": {"kind": kind, "name": name, "namespace": NS},
            "reason": reason, "message": message, "type": "Normal",
            "firstTimestamp": at, "lastTimestamp": at, "count": 1,
            "source": {"component": "horizontal-pod-autoscaler"}
        })
    };
    json!({
        "apiVersion": "v1", "kind": "EventList", "metadata": {"resourceVersion": "99"},
        "items": [
            event("worker", "HorizontalPodAutoscaler", "SuccessfulRescale",
                  "New size: 4; reason: external metric rabbitmq_queue_messages(&LabelSelector{MatchLabels:map[string]string{queue: jobs,},MatchExpressions:[]LabelSelectorRequirement{},}) above target",
                  "2026-11-29T10:00:00Z"),
            event("worker", "HorizontalPodAutoscaler", "SuccessfulRescale", "New size: 8; reason: external metric above target", "2026-11-29T10:00:15Z"),
            event("producer-abc", "Pod", "Pulled", "unrelated", "2026-11-29T10:00:20Z"),
        ]
    })
}

#[tokio::test]
async fn watch_gathers_renders_and_charts_from_the_api() -> Result<()> {
    // Two looks: the HPA has asked for 8, then for 12.
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/apis/autoscaling/v2/namespaces/wasm-jobs/horizontalpodautoscalers/worker",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Json(hpa(8, 4, "9500m")),
                    _ => Json(hpa(12, 8, "7250m")),
                }
            }),
        )
        .route(
            "/apis/apps/v1/namespaces/wasm-jobs/deployments/worker",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                Json(if calls.load(Ordering::SeqCst) <= 1 {
                    deployment(8, 4)
                } else {
                    deployment(12, 8)
                })
            }),
        )
        .route(
            "/api/v1/namespaces/wasm-jobs/events",
            get(|| async { Json(events()) }),
        )
        .with_state(calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{addr}").parse()?);
    let client = kube::Client::try_from(config)?;
    let watcher = Watcher::new(Sources {
        kube: Some((client, NS.into(), "worker".into(), "worker".into())),
        prometheus: None,
    });

    let first = watcher.sample(0.0).await?;
    assert_eq!((first.current, first.desired), (4, 8));
    assert_eq!((first.metric, first.target), (Some(9.5), Some(5.0)));
    assert_eq!((first.ready, first.updated, first.available), (4, 8, 4));
    // Without Prometheus, depth = the HPA's per-pod average x its replicas.
    assert_eq!(first.queue_depth, Some(38.0));
    assert!(first.conditions.contains(&(
        "ScalingActive".into(),
        "True".into(),
        "ValidMetricFound".into()
    )));
    let second = watcher.sample(2.0).await?;
    assert_eq!((second.current, second.desired, second.ready), (8, 12, 8));
    assert_eq!(second.queue_depth, Some(58.0));

    let events = watcher.recent_events(5).await?;
    assert_eq!(
        events.len(),
        2,
        "only the HPA's and the Deployment's: {events:?}"
    );
    assert!(
        events[0].contains("New size: 8"),
        "newest first: {events:?}"
    );

    let table = render(&second, &events);
    for expected in [
        "current   8",
        "desired  12",
        "metric 7.2 / target 5.0",
        "ready   8",
        "depth 58.0",
        "SuccessfulRescale",
    ] {
        assert!(
            table.contains(expected),
            "{expected:?} missing from:\n{table}"
        );
    }
    let samples = [first, second];
    let timeline = csv(&samples);
    assert_eq!(timeline.lines().count(), 3);
    assert!(
        timeline
            .lines()
            .nth(2)
            .is_some_and(|l| l.starts_with("2,8,12,7.25,5,8,12,8,58")),
        "{timeline}"
    );
    let chart = svg(&samples, "wasm-jobs/worker")?;
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    for series in ["queue depth", "desired replicas", "ready replicas"] {
        assert!(chart.contains(series), "{series} missing from the chart");
    }
    Ok(())
}
