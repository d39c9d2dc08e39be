//! The HPA v2 controller's decision for one External metric (`AverageValue`
//! or `Value`), following upstream `pkg/controller/podautoscaler`
//! (replica_calculator.go and horizontal.go) as of Kubernetes 1.33 and
//! later: the replica count from the metric with the per-direction
//! tolerance, the first sync's recommendation, the stabilization windows,
//! the scaling policies with `selectPolicy` and their event record, the
//! older path an HPA without `behavior` takes, and the min/max clamps.
//! Each rule names its upstream function where it is implemented.
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

/// An External metric's target (`target.type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// `AverageValue`: the metric per replica. Upstream
    /// `GetExternalPerPodMetricReplicas`: `ceil(metric / target)`, whatever
    /// the current count. Ours.
    AverageValue(f64),
    /// `Value`: the metric as a whole. Upstream `GetExternalMetricReplicas`
    /// and `getUsageRatioReplicaCount`: `ceil(metric / target × ready
    /// pods)`, so on a queue that a fleet is still draining the count keeps
    /// multiplying.
    Value(f64),
}

impl Target {
    /// The target's quantity.
    pub fn value(self) -> f64 {
        match self {
            Target::AverageValue(v) | Target::Value(v) => v,
        }
    }
}

impl std::fmt::Display for Target {
    /// As the HPA's YAML spells it: `averageValue 5`, `value 20`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AverageValue(v) => write!(f, "averageValue {v}"),
            Target::Value(v) => write!(f, "value {v}"),
        }
    }
}

/// The parts of an HPA the controller uses for one External metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// `minReplicas` (default 1).
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// The External metric's target.
    pub target: Target,
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
    /// Reads an HPA's first External metric, with an AverageValue or a
    /// Value target.
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
        let (field, quantity, target): (_, _, fn(f64) -> Target) =
            match external.target.type_.as_str() {
                "AverageValue" => (
                    "averageValue",
                    external.target.average_value.as_ref(),
                    Target::AverageValue,
                ),
                "Value" => ("value", external.target.value.as_ref(), Target::Value),
                other => anyhow::bail!(
                    "the External target is {other:?}; scalectl reads AverageValue and Value"
                ),
            };
        let quantity = quantity.ok_or_else(|| anyhow::anyhow!("no {field}"))?;
        // A Kubernetes quantity: "5", "5000m" and "0.005k" are all 5.
        let value = crate::watch::parse_quantity(&quantity.0)
            .filter(|v| *v > 0.0)
            .ok_or_else(|| anyhow::anyhow!("{field} {:?} is not a quantity above 0", quantity.0))?;
        // The controller reads targets as milli-units, rounded up
        // (`Quantity.MilliValue`): "1n" is 1m, never 0.
        let target = target(milli_ceil(value));
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

impl std::fmt::Display for Policy {
    /// `4 pods/15s`, `100%/15s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Pods { value, period } => write!(f, "{value} pods/{period}s"),
            Policy::Percent { value, period } => write!(f, "{value}%/{period}s"),
        }
    }
}

impl std::fmt::Display for Rules {
    /// `window 0s, Max of 100%/15s, 4 pods/15s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "window {}s, ", self.stabilization)?;
        match self.select {
            Select::Disabled => write!(f, "Disabled")?,
            Select::Max | Select::Min => {
                write!(f, "{:?} of ", self.select)?;
                for (i, policy) in self.policies.iter().enumerate() {
                    write!(f, "{}{policy}", if i > 0 { ", " } else { "" })?;
                }
            }
        }
        if self.tolerance != TOLERANCE {
            write!(f, ", tolerance {}", self.tolerance)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Spec {
    /// One line: target, min, max and behavior, as the plan assumed them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, min {}, max {}; ", self.target, self.min, self.max)?;
        if self.has_behavior {
            write!(f, "scaleUp {}; scaleDown {}", self.up, self.down)
        } else {
            write!(
                f,
                "no behavior: at most max(2 x current, 4) up per sync, {DOWNSCALE_STABILIZATION}s down window"
            )
        }
    }
}

/// `value` in whole milli-units, rounded up as `Quantity.MilliValue` does;
/// a value that is whole milli-units but for binary noise (`0.005k` read as
/// 5.000000000000001) stays as it is.
fn milli_ceil(value: f64) -> f64 {
    let milli = value * 1000.0;
    let whole = if (milli - milli.round()).abs() < 1e-6 {
        milli.round()
    } else {
        milli.ceil()
    };
    whole / 1000.0
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

/// The replica count an `AverageValue` metric asks for
/// (`GetExternalPerPodMetricReplicas`): `ceil(metric / target)`, unless
/// within the tolerance of the current count.
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
    if within(ratio, down_tolerance, up_tolerance) {
        status_replicas
    } else {
        (metric / target).ceil() as i32
    }
}

/// `Tolerances.isWithin`, inclusive at both ends. NaN (0 / 0) is not within.
fn within(ratio: f64, down_tolerance: f64, up_tolerance: f64) -> bool {
    ((1.0 - down_tolerance)..=(1.0 + up_tolerance)).contains(&ratio)
}

/// What the controller reads at a sync besides the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// The scale subresource's `spec.replicas`: what the controller last set.
    pub spec: i32,
    /// The scale's `status.replicas`: pods that exist. AverageValue metrics
    /// divide by it (upstream passes `statusReplicas`).
    pub status: i32,
    /// Pods Running and Ready. Value metrics multiply by it
    /// (`getReadyPodsCount`); pods still starting don't count.
    pub ready: i32,
}

impl Replicas {
    /// A settled fleet: every replica exists and is ready.
    pub fn settled(n: i32) -> Self {
        Self {
            spec: n,
            status: n,
            ready: n,
        }
    }
}

/// The replica count one metric proposes (horizontal.go
/// `computeStatusForExternalMetric`); `None` when upstream could not compute
/// it (a Value target with no pods to count: `getReadyPodsCount` fails).
pub fn proposal(spec: &Spec, metric: f64, replicas: Replicas) -> Option<i32> {
    let (down, up) = (spec.down.tolerance, spec.up.tolerance);
    match spec.target {
        Target::AverageValue(target) => Some(metric_replicas_within(
            metric,
            target,
            replicas.status,
            down,
            up,
        )),
        // getUsageRatioReplicaCount, with the spec replicas as current.
        Target::Value(target) => {
            let ratio = metric / target;
            if replicas.spec == 0 {
                // "Scale to zero or n pods depending on usageRatio".
                Some(ratio.ceil() as i32)
            } else if within(ratio, down, up) {
                Some(replicas.spec)
            } else if replicas.status == 0 {
                None
            } else {
                Some((ratio * f64::from(replicas.ready)).ceil() as i32)
            }
        }
    }
}

/// `computeReplicasForMetrics`: the largest proposal among the metrics that
/// could be read. `None`, no scaling at this sync, when none could, or when
/// some could not and the rest would scale below `spec_replicas` (no
/// scale-down on partial data).
pub fn combine(proposals: &[Option<i32>], spec_replicas: i32) -> Option<i32> {
    let largest = proposals.iter().flatten().copied().max()?;
    let unread = proposals.iter().any(Option::is_none);
    (!unread || largest >= spec_replicas).then_some(largest)
}

/// One direction's record of scale events (horizontal.go
/// `timestampedScaleEvent`), for the policies' per-period limits.
#[derive(Debug, Clone, Default, PartialEq)]
struct ScaleEvents(Vec<ScaleEvent>);

#[derive(Debug, Clone, Copy, PartialEq)]
struct ScaleEvent {
    at: f64,
    change: i32,
    /// Older than this direction's longest policy period when last stored:
    /// the slot may be reused.
    outdated: bool,
}

impl ScaleEvents {
    /// `storeScaleEvent` with `markScaleEventsOutdated`: events older than
    /// the direction's longest policy period are marked outdated, and the
    /// new event takes the last outdated slot, else is appended. So the
    /// other direction, whose policies may look further back, no longer
    /// sees an overwritten event.
    fn store(&mut self, now: f64, change: i32, longest_period: f64) {
        let cutoff = now - longest_period;
        let mut reuse = None;
        for (i, event) in self.0.iter_mut().enumerate() {
            if event.at < cutoff {
                event.outdated = true;
            }
            if event.outdated {
                reuse = Some(i);
            }
        }
        let event = ScaleEvent {
            at: now,
            change,
            outdated: false,
        };
        match reuse {
            Some(i) => self.0[i] = event,
            None => self.0.push(event),
        }
    }

    /// `getReplicasChangePerPeriod`: the change within the last `period`
    /// seconds, the cutoff itself excluded.
    fn changed_in(&self, now: f64, period: f64) -> i32 {
        let cutoff = now - period;
        self.0
            .iter()
            .filter(|e| e.at > cutoff)
            .map(|e| e.change)
            .sum()
    }
}

/// `getLongestPolicyPeriod`.
fn longest_period(rules: &Rules) -> f64 {
    rules
        .policies
        .iter()
        .map(Policy::period)
        .fold(0.0, f64::max)
}

/// The controller's memory between syncs for one HPA.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    recommendations: Vec<(f64, i32)>,
    /// The first sync's record of the current count has been made.
    seeded: bool,
    /// The controller itself scaled the target to 0 (the ScaledToZero
    /// condition), so it may scale it up from 0 again.
    scaled_to_zero: bool,
    up_events: ScaleEvents,
    down_events: ScaleEvents,
}

impl Controller {
    /// One sync at time `now` (seconds): the new replica count for a metric
    /// value. `replicas.spec` is the current count the controller acts on.
    pub fn sync(&mut self, spec: &Spec, now: f64, metric: f64, replicas: Replicas) -> i32 {
        self.sync_proposals(spec, now, replicas, &[proposal(spec, metric, replicas)])
    }

    /// The same for an HPA with several metrics, given each metric's
    /// proposal (`None` for one that could not be read): upstream scales on
    /// the largest (`combine`). The plan simulates only the queue metric;
    /// this is the controller's side of the rest.
    pub fn sync_proposals(
        &mut self,
        spec: &Spec,
        now: f64,
        replicas: Replicas,
        proposals: &[Option<i32>],
    ) -> i32 {
        let current = replicas.spec;
        // reconcileAutoscaler: `recordInitialRecommendation` first, on every
        // path; the current count then holds scale-down for the window.
        if !std::mem::replace(&mut self.seeded, true) {
            self.recommendations.push((now, current));
        }
        // Then the order of reconcileAutoscaler's branches: at 0 replicas
        // (`shouldComputeMetricsForZeroReplicas`) scaling is disabled
        // (ScalingDisabled) unless the controller scaled the target to 0
        // itself (the ScaledToZero condition; minReplicas 0 needs the
        // HPAScaleToZero gate); above max or below min the count goes to
        // the bound directly, without stabilization; else the metric.
        let desired = if current == 0 && !self.scaled_to_zero {
            0
        } else if current > spec.max && current != 0 {
            spec.max
        } else if current < spec.min && current != 0 {
            spec.min
        } else {
            // An unreadable metric set ends the sync before normalization:
            // nothing recorded, nothing scaled.
            let Some(proposed) = combine(proposals, current) else {
                return current;
            };
            let normalized = if spec.has_behavior {
                let stabilized = self.stabilize(spec, now, current, proposed);
                self.limit(spec, now, current, stabilized)
            } else {
                let stabilized = self.stabilize_without_behavior(now, proposed);
                without_behavior_limit(spec, current, stabilized)
            };
            // "Ensure we scale to at least minReplicas when scaling from
            // zero with increased minReplicas".
            if current == 0 {
                normalized.max(spec.min)
            } else {
                normalized
            }
        };
        if desired != current {
            self.scaled_to_zero = desired == 0;
        }
        self.store_scale_event(spec, now, current, desired);
        desired
    }

    /// `storeScaleEvent`: only with `behavior`, the only path that reads
    /// the record.
    fn store_scale_event(&mut self, spec: &Spec, now: f64, from: i32, to: i32) {
        if !spec.has_behavior {
            return;
        }
        if to > from {
            self.up_events
                .store(now, to - from, longest_period(&spec.up));
        } else if to < from {
            self.down_events
                .store(now, from - to, longest_period(&spec.down));
        }
    }

    /// `stabilizeRecommendationWithBehaviors`: scale up to at most the
    /// lowest recommendation within the up window, down to at least the
    /// highest within the down window.
    fn stabilize(&mut self, spec: &Spec, now: f64, current: i32, proposed: i32) -> i32 {
        let (up_cutoff, down_cutoff) = (now - spec.up.stabilization, now - spec.down.stabilization);
        let mut up = proposed;
        let mut down = proposed;
        let mut old = None;
        for (i, &(at, rec)) in self.recommendations.iter().enumerate() {
            if at > up_cutoff {
                up = up.min(rec);
            }
            if at > down_cutoff {
                down = down.max(rec);
            }
            if at < up_cutoff && at < down_cutoff {
                old = Some(i);
            }
        }
        // The new recommendation takes the last slot older than both
        // windows, else is appended (so a record exactly at a cutoff stays,
        // uncounted, as upstream keeps it).
        match old {
            Some(i) => self.recommendations[i] = (now, proposed),
            None => self.recommendations.push((now, proposed)),
        }
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

    /// The replicas at the start of a policy's period: the current count
    /// less what either direction's record holds for that period.
    fn period_start(&self, now: f64, current: i32, period: f64) -> i32 {
        current - self.up_events.changed_in(now, period) + self.down_events.changed_in(now, period)
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
mod upstream_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, target: f64, up: Rules, down: Rules) -> Spec {
        Spec {
            min,
            max,
            target: Target::AverageValue(target),
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
            assert_eq!(
                Spec::from_hpa(&hpa(value)).unwrap().target,
                Target::AverageValue(5.0),
                "{value}"
            );
        }
        assert!(Spec::from_hpa(&hpa("five")).is_err());
        // Rounded up to whole milli-units, as the controller reads them:
        // never down to a target of 0.
        for (value, milli) in [("1n", 0.001), ("1500u", 0.002), ("2.5", 2.5)] {
            assert_eq!(
                Spec::from_hpa(&hpa(value)).unwrap().target,
                Target::AverageValue(milli),
                "{value}"
            );
        }
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
        assert_eq!(
            Controller::default().sync(&default, 0.0, 21.5, Replicas::settled(4)),
            4
        );
        let eager_up = Rules {
            tolerance: 0.05,
            ..Rules::default_up()
        };
        let eager = spec(1, 20, 5.0, eager_up, Rules::default_down());
        assert_eq!(
            Controller::default().sync(&eager, 0.0, 21.5, Replicas::settled(4)),
            5
        );
        // The up tolerance says nothing about going down: 18.5 (0.925)
        // stays within the default 0.1 below.
        assert_eq!(
            Controller::default().sync(&eager, 0.0, 18.5, Replicas::settled(4)),
            4
        );
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
            current = c.sync(
                &legacy,
                f64::from(sync) * 15.0,
                300.0,
                Replicas::settled(current),
            );
            steps.push(current);
        }
        assert_eq!(steps, [4, 8, 16, 20, 20]);
        // Scale-down waits 5 minutes, the boundary included: the 20 last
        // recommended at t = 60 holds through t = 360 and goes at 375.
        assert_eq!(c.sync(&legacy, 360.0, 0.0, Replicas::settled(20)), 20);
        assert_eq!(c.sync(&legacy, 375.0, 0.0, Replicas::settled(20)), 1);
        // An older, higher recommendation scales up: 2 replicas (set by
        // hand), 20 recommended within the window, a metric asking for 2.
        let mut c = Controller::default();
        assert_eq!(c.sync(&legacy, 0.0, 100.0, Replicas::settled(20)), 20);
        assert_eq!(
            c.sync(&legacy, 15.0, 10.0, Replicas::settled(2)),
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
        assert_eq!(c.sync(&s, 0.0, 0.0, Replicas::settled(5)), 5);
        assert_eq!(c.sync(&s, 285.0, 0.0, Replicas::settled(5)), 5);
        assert_eq!(c.sync(&s, 300.0, 0.0, Replicas::settled(5)), 1);
    }

    #[test]
    fn zero_replicas_follow_upstream() {
        // A target scaled to 0 by hand: scaling is disabled, whatever the
        // metric and minReplicas (horizontal.go
        // shouldComputeMetricsForZeroReplicas: "ScalingDisabled").
        let mut spec = spec(1, 20, 5.0, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, 0.0, 500.0, Replicas::settled(0)), 0);
        spec.min = 0;
        spec.down.stabilization = 0.0;
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, 0.0, 5.4, Replicas::settled(0)), 0);
        // minReplicas 0 (HPAScaleToZero) and the controller scaled to 0
        // itself: 5.4 against 5 is then ceil(1.08) = 2 from 0, not
        // "within tolerance of 1".
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, 0.0, 0.0, Replicas::settled(1)), 0);
        let mut from_zero = c.clone();
        assert_eq!(from_zero.sync(&spec, 15.0, 5.4, Replicas::settled(0)), 2);
        // No messages at 0 stays at 0 (0 / 0 is NaN: not within, ceil 0).
        assert_eq!(c.clone().sync(&spec, 15.0, 0.0, Replicas::settled(0)), 0);
        // minReplicas raised since: at least the new min.
        spec.min = 3;
        assert_eq!(c.sync(&spec, 15.0, 5.4, Replicas::settled(0)), 3);
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
        assert_eq!(
            c.sync(&s, 0.0, 1000.0, Replicas::settled(2)),
            6,
            "clamped to max"
        );
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, 0.0, 0.0, Replicas::settled(4)),
            2,
            "clamped to min"
        );
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, 0.0, 0.0, Replicas::settled(1)),
            2,
            "below min: raised to min"
        );
    }

    #[test]
    fn scale_up_limited_to_4_pods_or_100_percent_per_15_s() {
        let s = spec(1, 100, 1.0, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        // From 1: max(1 + 4, 2 * 1) = 5.
        assert_eq!(c.sync(&s, 0.0, 100.0, Replicas::settled(1)), 5);
        // 15 s later the window has passed: max(5 + 4, 10) = 10.
        assert_eq!(c.sync(&s, 15.0, 100.0, Replicas::settled(5)), 10);
        assert_eq!(c.sync(&s, 30.0, 100.0, Replicas::settled(10)), 20);
        // Within the same period, nothing more is allowed.
        assert_eq!(c.sync(&s, 35.0, 100.0, Replicas::settled(20)), 20);
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
        assert_eq!(c.sync(&s, 0.0, 100.0, Replicas::settled(1)), 2);
        let mut c = Controller::default();
        // From 10: min(14, 20) = 14.
        assert_eq!(c.sync(&s, 0.0, 100.0, Replicas::settled(10)), 14);
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
            c.sync(&s, 0.0, 50.0, Replicas::settled(10)),
            10,
            "ceil(50 / 5) = 10: no change"
        );
        // The queue empties: the recommendation is 1, but the highest within
        // the last 60 s is still 10.
        assert_eq!(c.sync(&s, 15.0, 0.0, Replicas::settled(10)), 10);
        assert_eq!(c.sync(&s, 45.0, 0.0, Replicas::settled(10)), 10);
        // At 75 s the 10 from t=0 is out of the window.
        assert_eq!(c.sync(&s, 75.0, 0.0, Replicas::settled(10)), 1);
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
        assert_eq!(
            c.sync(&s, 0.0, 0.0, Replicas::settled(9)),
            4,
            "9 * 0.5 = 4.5, truncated"
        );
        // Still in the same 60 s: the period started at 9, 5 already removed.
        assert_eq!(c.sync(&s, 15.0, 0.0, Replicas::settled(4)), 4);
        assert_eq!(c.sync(&s, 61.0, 0.0, Replicas::settled(4)), 2);
    }
}
