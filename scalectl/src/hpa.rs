//! The HPA v2 controller's decision for one External `AverageValue` metric,
//! following upstream `pkg/controller/podautoscaler` (replica_calculator.go
//! and horizontal.go): the replica count from the metric with the 0.1
//! tolerance, the stabilization windows, the scaling policies with
//! `selectPolicy`, and the min/max clamps.
//!
//! This module holds only the controller's arithmetic; the world it acts on
//! (queue, pods, metric lag) is simulated in `plan`.

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler};

/// The controller's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// The controller's sync period (`--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD: f64 = 15.0;

/// One scaling policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// At most this many pods per period.
    Pods { value: i32, period: f64 },
    /// At most this percent of the pods at the period's start, per period.
    Percent { value: i32, period: f64 },
}

impl Policy {
    fn period(&self) -> f64 {
        match self {
            Policy::Pods { period, .. } | Policy::Percent { period, .. } => *period,
        }
    }
}

/// How policies combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// The policy allowing the most change.
    Max,
    /// The policy allowing the least change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// `behavior.scaleUp` or `behavior.scaleDown`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `stabilizationWindowSeconds`.
    pub stabilization: f64,
    /// `policies`.
    pub policies: Vec<Policy>,
    /// `selectPolicy`.
    pub select: Select,
    /// `tolerance` (HPAConfigurableTolerance): how far the ratio may move
    /// in this direction before the controller acts; the controller's 0.1
    /// when unset.
    pub tolerance: f64,
}

impl Rules {
    /// The API server's default for scale-up: no stabilization; 4 pods or
    /// 100 % per 15 s, whichever is more.
    pub fn default_up() -> Self {
        Self {
            stabilization: 0.0,
            policies: vec![
                Policy::Pods {
                    value: 4,
                    period: 15.0,
                },
                Policy::Percent {
                    value: 100,
                    period: 15.0,
                },
            ],
            select: Select::Max,
            tolerance: TOLERANCE,
        }
    }

    /// The API server's default for scale-down: 300 s stabilization; 100 %
    /// per 15 s.
    pub fn default_down() -> Self {
        Self {
            stabilization: 300.0,
            policies: vec![Policy::Percent {
                value: 100,
                period: 15.0,
            }],
            select: Select::Max,
            tolerance: TOLERANCE,
        }
    }

    fn from_api(rules: Option<&HPAScalingRules>, default: Rules) -> Rules {
        let Some(rules) = rules else { return default };
        let policies = rules.policies.as_ref().map(|ps| {
            ps.iter()
                .filter_map(|p| match p.type_.as_str() {
                    "Pods" => Some(Policy::Pods {
                        value: p.value,
                        period: f64::from(p.period_seconds),
                    }),
                    "Percent" => Some(Policy::Percent {
                        value: p.value,
                        period: f64::from(p.period_seconds),
                    }),
                    _ => None,
                })
                .collect()
        });
        Rules {
            stabilization: rules
                .stabilization_window_seconds
                .map_or(default.stabilization, f64::from),
            policies: policies.unwrap_or(default.policies),
            select: match rules.select_policy.as_deref() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            // horizontal.go tolerancesForHpa: the rule's own, else the default.
            tolerance: rules
                .tolerance
                .as_ref()
                .and_then(|q| crate::watch::parse_quantity(&q.0))
                .unwrap_or(default.tolerance),
        }
    }
}

/// The parts of an HPA the controller uses for one External AverageValue metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// `minReplicas` (default 1).
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// The `averageValue` target.
    pub target: f64,
    /// `behavior.scaleUp`, defaulted.
    pub up: Rules,
    /// `behavior.scaleDown`, defaulted.
    pub down: Rules,
    /// Whether the HPA sets `behavior` at all. Without it upstream takes
    /// its older path (`normalizeDesiredReplicas`), not the behavior path
    /// with default rules.
    pub has_behavior: bool,
}

impl Spec {
    /// Reads an HPA with one External metric and an AverageValue target.
    pub fn from_hpa(hpa: &HorizontalPodAutoscaler) -> anyhow::Result<Self> {
        let spec = hpa
            .spec
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the HPA has no spec"))?;
        let external = spec
            .metrics
            .iter()
            .flatten()
            .find_map(|m| m.external.as_ref())
            .ok_or_else(|| anyhow::anyhow!("the HPA has no External metric"))?;
        anyhow::ensure!(
            external.target.type_ == "AverageValue",
            "the External target must be AverageValue"
        );
        let target = external
            .target
            .average_value
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no averageValue"))?;
        // A Kubernetes quantity: "5", "5000m" and "0.005k" are all 5.
        let target = crate::watch::parse_quantity(&target.0)
            .ok_or_else(|| anyhow::anyhow!("averageValue {:?} is not a quantity", target.0))?;
        let behavior = spec.behavior.as_ref();
        Ok(Self {
            has_behavior: behavior.is_some(),
            min: spec.min_replicas.unwrap_or(1),
            max: spec.max_replicas,
            target,
            up: Rules::from_api(
                behavior.and_then(|b| b.scale_up.as_ref()),
                Rules::default_up(),
            ),
            down: Rules::from_api(
                behavior.and_then(|b| b.scale_down.as_ref()),
                Rules::default_down(),
            ),
        })
    }
}

/// The HPA's metrics other than the External one `Spec` models, described
/// (`Resource cpu`, `Pods m`, …). Upstream takes the largest replica count
/// over all metrics (horizontal.go computeReplicasForMetrics), so with any
/// of these a real cluster may run more replicas than a plan shows.
pub fn other_metrics(hpa: &HorizontalPodAutoscaler) -> Vec<String> {
    let metrics = hpa.spec.iter().flat_map(|s| s.metrics.iter().flatten());
    let mut skipped_external = false;
    metrics
        .filter_map(|m| {
            let name = match m.type_.as_str() {
                "External" if !skipped_external && m.external.is_some() => {
                    skipped_external = true;
                    return None;
                }
                "External" => m.external.as_ref().map(|e| e.metric.name.clone()),
                "Resource" => m.resource.as_ref().map(|r| r.name.clone()),
                "ContainerResource" => m.container_resource.as_ref().map(|r| r.name.clone()),
                "Pods" => m.pods.as_ref().map(|p| p.metric.name.clone()),
                "Object" => m.object.as_ref().map(|o| o.metric.name.clone()),
                _ => None,
            };
            Some(format!("{} {}", m.type_, name.unwrap_or_default()))
        })
        .collect()
}

/// The controller's `--horizontal-pod-autoscaler-downscale-stabilization`
/// (5 minutes), used when the HPA has no `behavior`.
pub const DOWNSCALE_STABILIZATION: f64 = 300.0;

/// `convertDesiredReplicasWithRules` (no `behavior`): at most
/// `max(2 × current, 4)` per sync (`calculateScaleUpLimit`), within min and max.
fn without_behavior_limit(spec: &Spec, current: i32, desired: i32) -> i32 {
    let up_limit = (2 * current).max(4);
    let maximum = spec.max.min(up_limit);
    if desired < spec.min {
        spec.min
    } else if desired > maximum {
        maximum
    } else {
        desired
    }
}

/// The replica count the metric asks for (`GetExternalPerPodMetricReplicas`):
/// `ceil(metric / target)`, unless within the tolerance of the current count.
///
/// Within is inclusive, as upstream has it since 1.33
/// (pkg/controller/podautoscaler/replica_calculator.go, `Tolerances.isWithin`:
/// `1 - down <= ratio && ratio <= 1 + up`): a ratio of exactly 1.1 or 0.9
/// changes nothing. Before 1.33 it was `|1 - ratio| > tolerance` to act,
/// which in floating point also acted at exactly 1.1.
pub fn metric_replicas(metric: f64, target: f64, status_replicas: i32) -> i32 {
    metric_replicas_within(metric, target, status_replicas, TOLERANCE, TOLERANCE)
}

/// The same with a tolerance per direction, as `behavior.scaleDown.tolerance`
/// and `behavior.scaleUp.tolerance` set them.
pub fn metric_replicas_within(
    metric: f64,
    target: f64,
    status_replicas: i32,
    down_tolerance: f64,
    up_tolerance: f64,
) -> i32 {
    let ratio = metric / (target * f64::from(status_replicas));
    let within = ((1.0 - down_tolerance)..=(1.0 + up_tolerance)).contains(&ratio);
    if !within {
        (metric / target).ceil() as i32
    } else {
        status_replicas
    }
}

/// The controller's memory between syncs for one HPA.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    recommendations: Vec<(f64, i32)>,
    /// The first sync's record of the current count has been made.
    seeded: bool,
    up_events: Vec<(f64, i32)>,
    down_events: Vec<(f64, i32)>,
}

impl Controller {
    /// One sync at time `now` (seconds): the new replica count for a metric
    /// value, given the current (spec) replicas.
    pub fn sync(&mut self, spec: &Spec, now: f64, metric: f64, current: i32) -> i32 {
        // The order of horizontal.go's reconcileAutoscaler: a target scaled
        // to 0 by hand while minReplicas is above 0 has autoscaling
        // disabled (condition ScalingDisabled) and stays at 0; then the
        // max and min clamps; only then the metric.
        let desired = if current == 0 && spec.min != 0 {
            0
        } else if current > spec.max {
            spec.max
        } else if current < spec.min {
            spec.min
        } else {
            // At 0 replicas (minReplicas 0) the ratio is infinite, never
            // within tolerance: ceil(metric / target), as upstream.
            let proposed = metric_replicas_within(
                metric,
                spec.target,
                current,
                spec.down.tolerance,
                spec.up.tolerance,
            );
            // reconcileAutoscaler: the first sync records the current count
            // as a recommendation, which holds scale-down for the window.
            if !std::mem::replace(&mut self.seeded, true) {
                self.recommendations.push((now, current));
            }
            if spec.has_behavior {
                let stabilized = self.stabilize(spec, now, current, proposed);
                self.limit(spec, now, current, stabilized)
            } else {
                let stabilized = self.stabilize_without_behavior(now, proposed);
                without_behavior_limit(spec, current, stabilized)
            }
        };
        if desired > current {
            self.up_events.push((now, desired - current));
        } else if desired < current {
            self.down_events.push((now, current - desired));
        }
        desired
    }

    /// `stabilizeRecommendationWithBehaviors`: scale up to at most the
    /// lowest recommendation within the up window, down to at least the
    /// highest within the down window.
    fn stabilize(&mut self, spec: &Spec, now: f64, current: i32, proposed: i32) -> i32 {
        let (up_cutoff, down_cutoff) = (now - spec.up.stabilization, now - spec.down.stabilization);
        let mut up = proposed;
        let mut down = proposed;
        for &(at, rec) in &self.recommendations {
            if at > up_cutoff {
                up = up.min(rec);
            }
            if at > down_cutoff {
                down = down.max(rec);
            }
        }
        let keep_after = up_cutoff.min(down_cutoff);
        self.recommendations.retain(|(at, _)| *at > keep_after);
        self.recommendations.push((now, proposed));
        current.max(up).min(down)
    }

    /// `stabilizeRecommendation` (no `behavior`): the highest recommendation
    /// of the last 5 minutes, the boundary included (a record counts unless
    /// it is *before* the cutoff), so an older, higher one can even scale
    /// up. The new recommendation takes the slot of an expired one if there
    /// is one, else is appended.
    fn stabilize_without_behavior(&mut self, now: f64, proposed: i32) -> i32 {
        let cutoff = now - DOWNSCALE_STABILIZATION;
        let mut highest = proposed;
        let mut expired = None;
        for (i, &(at, rec)) in self.recommendations.iter().enumerate() {
            if at < cutoff {
                expired = Some(i);
            } else {
                highest = highest.max(rec);
            }
        }
        match expired {
            Some(i) => self.recommendations[i] = (now, proposed),
            None => self.recommendations.push((now, proposed)),
        }
        highest
    }

    /// `convertDesiredReplicasWithBehaviorRate`: the policies' rate limits and
    /// the min/max clamps.
    fn limit(&self, spec: &Spec, now: f64, current: i32, desired: i32) -> i32 {
        if desired > current {
            let limit = self.scale_up_limit(&spec.up, now, current).max(current);
            desired.min(spec.max.min(limit))
        } else if desired < current {
            let limit = self.scale_down_limit(&spec.down, now, current).min(current);
            desired.max(spec.min.max(limit))
        } else {
            desired
        }
    }

    fn changed_in(events: &[(f64, i32)], now: f64, period: f64) -> i32 {
        events
            .iter()
            .filter(|(at, _)| *at > now - period)
            .map(|(_, n)| n)
            .sum()
    }

    fn period_start(&self, now: f64, current: i32, period: f64) -> i32 {
        current - Self::changed_in(&self.up_events, now, period)
            + Self::changed_in(&self.down_events, now, period)
    }

    fn scale_up_limit(&self, rules: &Rules, now: f64, current: i32) -> i32 {
        let pick: fn(i32, i32) -> i32 = match rules.select {
            Select::Disabled => return current,
            Select::Min => i32::min,
            Select::Max => i32::max,
        };
        let mut result = if rules.select == Select::Min {
            i32::MAX
        } else {
            i32::MIN
        };
        for policy in &rules.policies {
            let start = self.period_start(now, current, policy.period());
            let proposed = match *policy {
                Policy::Pods { value, .. } => start + value,
                Policy::Percent { value, .. } => {
                    (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
                }
            };
            result = pick(result, proposed);
        }
        result
    }

    fn scale_down_limit(&self, rules: &Rules, now: f64, current: i32) -> i32 {
        // For scale-down, "Max" picks the policy that removes the most pods:
        // the lowest limit.
        let pick: fn(i32, i32) -> i32 = match rules.select {
            Select::Disabled => return current,
            Select::Min => i32::max,
            Select::Max => i32::min,
        };
        let mut result = if rules.select == Select::Min {
            i32::MIN
        } else {
            i32::MAX
        };
        for policy in &rules.policies {
            let start = self.period_start(now, current, policy.period());
            let proposed = match *policy {
                Policy::Pods { value, .. } => start - value,
                Policy::Percent { value, .. } => {
                    (f64::from(start) * (1.0 - f64::from(value) / 100.0)) as i32
                }
            };
            result = pick(result, proposed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, target: f64, up: Rules, down: Rules) -> Spec {
        Spec {
            min,
            max,
            target,
            up,
            down,
            has_behavior: true,
        }
    }

    #[test]
    fn tolerance_edge() {
        // 4 pods, target 5: 21.9 is a ratio of 1.095, inside the tolerance.
        assert_eq!(metric_replicas(21.9, 5.0, 4), 4);
        // Exactly 1.1 is inside since 1.33 (isWithin is inclusive): 4 pods
        // and 22 messages stay at 4, as do 2 pods and 11.
        assert_eq!(metric_replicas(22.0, 5.0, 4), 4);
        assert_eq!(metric_replicas(11.0, 5.0, 2), 2);
        // Exactly 0.9 too: 18 messages on 4 pods.
        assert_eq!(metric_replicas(18.0, 5.0, 4), 4);
        // 22.5 is a ratio of 1.125: outside, ceil(22.5 / 5) = 5.
        assert_eq!(metric_replicas(22.5, 5.0, 4), 5);
        // Below: 17.5 is 0.875, outside: ceil(3.5) = 4... which is current.
        assert_eq!(metric_replicas(17.5, 5.0, 4), 4);
        assert_eq!(metric_replicas(17.0, 5.0, 4), 4);
        assert_eq!(metric_replicas(15.0, 5.0, 4), 3);
    }

    #[test]
    fn targets_are_read_as_quantities() {
        let hpa = |value: &str| -> HorizontalPodAutoscaler {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": { "name": "w" },
                "spec": {
                    "scaleTargetRef": { "kind": "Deployment", "name": "w" },
                    "maxReplicas": 20,
                    "metrics": [{
                        "type": "External",
                        "external": {
                            "metric": { "name": "m" },
                            "target": { "type": "AverageValue", "averageValue": value }
                        }
                    }]
                }
            }))
            .unwrap()
        };
        for value in ["5", "5000m", "0.005k"] {
            assert_eq!(Spec::from_hpa(&hpa(value)).unwrap().target, 5.0, "{value}");
        }
        assert!(Spec::from_hpa(&hpa("five")).is_err());
        assert!(other_metrics(&hpa("5")).is_empty());
        let mut with_cpu = hpa("5");
        with_cpu.spec.as_mut().unwrap().metrics.as_mut().unwrap().push(
            serde_json::from_value(serde_json::json!({
                "type": "Resource",
                "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 80 } }
            }))
            .unwrap(),
        );
        assert_eq!(other_metrics(&with_cpu), vec!["Resource cpu".to_owned()]);
        // behavior.*.tolerance is a quantity too, per direction.
        let mut tolerant = hpa("5");
        let behavior = serde_json::from_value(serde_json::json!({
            "scaleUp": { "tolerance": "50m" }
        }))
        .unwrap();
        tolerant.spec.as_mut().unwrap().behavior = Some(behavior);
        let spec = Spec::from_hpa(&tolerant).unwrap();
        assert_eq!((spec.up.tolerance, spec.down.tolerance), (0.05, TOLERANCE));
    }

    #[test]
    fn each_direction_takes_its_own_tolerance() {
        // 4 pods, target 5, 21.5 messages: a ratio of 1.075.
        let default = spec(1, 20, 5.0, Rules::default_up(), Rules::default_down());
        assert_eq!(Controller::default().sync(&default, 0.0, 21.5, 4), 4);
        let eager_up = Rules {
            tolerance: 0.05,
            ..Rules::default_up()
        };
        let eager = spec(1, 20, 5.0, eager_up, Rules::default_down());
        assert_eq!(Controller::default().sync(&eager, 0.0, 21.5, 4), 5);
        // The up tolerance says nothing about going down: 18.5 (0.925)
        // stays within the default 0.1 below.
        assert_eq!(Controller::default().sync(&eager, 0.0, 18.5, 4), 4);
    }

    #[test]
    fn without_behavior_the_older_path_applies() {
        let legacy = Spec {
            has_behavior: false,
            ..spec(1, 20, 5.0, Rules::default_up(), Rules::default_down())
        };
        // Scale-up at most max(2 x current, 4) per sync: 1 -> 4 -> 8 -> 16
        // -> 20, where the behavior defaults give 1 -> 5 -> 10 -> 20.
        let mut c = Controller::default();
        let mut current = 1;
        let mut steps = vec![];
        for sync in 0..5 {
            current = c.sync(&legacy, f64::from(sync) * 15.0, 300.0, current);
            steps.push(current);
        }
        assert_eq!(steps, [4, 8, 16, 20, 20]);
        // Scale-down waits 5 minutes, the boundary included: the 20 last
        // recommended at t = 60 holds through t = 360 and goes at 375.
        assert_eq!(c.sync(&legacy, 360.0, 0.0, 20), 20);
        assert_eq!(c.sync(&legacy, 375.0, 0.0, 20), 1);
        // An older, higher recommendation scales up: 2 replicas (set by
        // hand), 20 recommended within the window, a metric asking for 2.
        let mut c = Controller::default();
        assert_eq!(c.sync(&legacy, 0.0, 100.0, 20), 20);
        assert_eq!(
            c.sync(&legacy, 15.0, 10.0, 2),
            4,
            "up, limited to max(4, 4)"
        );
    }

    #[test]
    fn the_first_sync_holds_scale_down_for_the_window() {
        // 5 replicas and an empty queue at the first sync: upstream records
        // 5 as a recommendation, so the 300 s down window holds them.
        let s = spec(1, 20, 5.0, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        assert_eq!(c.sync(&s, 0.0, 0.0, 5), 5);
        assert_eq!(c.sync(&s, 285.0, 0.0, 5), 5);
        assert_eq!(c.sync(&s, 300.0, 0.0, 5), 1);
    }

    #[test]
    fn zero_replicas_follow_upstream() {
        // minReplicas 1 and a target scaled to 0: scaling is disabled,
        // whatever the metric (horizontal.go: "ScalingDisabled").
        let mut spec = spec(1, 20, 5.0, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, 0.0, 500.0, 0), 0);
        // minReplicas 0 (HPAScaleToZero): 5.4 against 5 is ceil(1.08) = 2,
        // not "within tolerance of 1".
        spec.min = 0;
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, 0.0, 5.4, 0), 2);
        // No messages at 0 stays at 0 (0 / 0 is NaN: not within, ceil 0).
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, 0.0, 0.0, 0), 0);
    }

    #[test]
    fn min_and_max_clamp() {
        let s = spec(
            2,
            6,
            5.0,
            Rules::default_up(),
            Rules {
                stabilization: 0.0,
                ..Rules::default_down()
            },
        );
        let mut c = Controller::default();
        assert_eq!(c.sync(&s, 0.0, 1000.0, 2), 6, "clamped to max");
        let mut c = Controller::default();
        assert_eq!(c.sync(&s, 0.0, 0.0, 4), 2, "clamped to min");
        let mut c = Controller::default();
        assert_eq!(c.sync(&s, 0.0, 0.0, 1), 2, "below min: raised to min");
    }

    #[test]
    fn scale_up_limited_to_4_pods_or_100_percent_per_15_s() {
        let s = spec(1, 100, 1.0, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        // From 1: max(1 + 4, 2 * 1) = 5.
        assert_eq!(c.sync(&s, 0.0, 100.0, 1), 5);
        // 15 s later the window has passed: max(5 + 4, 10) = 10.
        assert_eq!(c.sync(&s, 15.0, 100.0, 5), 10);
        assert_eq!(c.sync(&s, 30.0, 100.0, 10), 20);
        // Within the same period, nothing more is allowed.
        assert_eq!(c.sync(&s, 35.0, 100.0, 20), 20);
    }

    #[test]
    fn select_policy_min_takes_the_smaller_step() {
        let up = Rules {
            select: Select::Min,
            ..Rules::default_up()
        };
        let s = spec(1, 100, 1.0, up, Rules::default_down());
        let mut c = Controller::default();
        // min(1 + 4, 2) = 2.
        assert_eq!(c.sync(&s, 0.0, 100.0, 1), 2);
        let mut c = Controller::default();
        // From 10: min(14, 20) = 14.
        assert_eq!(c.sync(&s, 0.0, 100.0, 10), 14);
    }

    #[test]
    fn stabilization_holds_a_scale_down() {
        let down = Rules {
            stabilization: 60.0,
            policies: vec![Policy::Percent {
                value: 100,
                period: 15.0,
            }],
            select: Select::Max,
            tolerance: TOLERANCE,
        };
        let s = spec(1, 20, 5.0, Rules::default_up(), down);
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, 0.0, 50.0, 10),
            10,
            "ceil(50 / 5) = 10: no change"
        );
        // The queue empties: the recommendation is 1, but the highest within
        // the last 60 s is still 10.
        assert_eq!(c.sync(&s, 15.0, 0.0, 10), 10);
        assert_eq!(c.sync(&s, 45.0, 0.0, 10), 10);
        // At 75 s the 10 from t=0 is out of the window.
        assert_eq!(c.sync(&s, 75.0, 0.0, 10), 1);
    }

    #[test]
    fn scale_down_percent_policy_rounds_down_and_counts_the_period() {
        let down = Rules {
            stabilization: 0.0,
            policies: vec![Policy::Percent {
                value: 50,
                period: 60.0,
            }],
            select: Select::Max,
            tolerance: TOLERANCE,
        };
        let s = spec(1, 20, 5.0, Rules::default_up(), down);
        let mut c = Controller::default();
        assert_eq!(c.sync(&s, 0.0, 0.0, 9), 4, "9 * 0.5 = 4.5, truncated");
        // Still in the same 60 s: the period started at 9, 5 already removed.
        assert_eq!(c.sync(&s, 15.0, 0.0, 4), 4);
        assert_eq!(c.sync(&s, 61.0, 0.0, 4), 2);
    }
}
