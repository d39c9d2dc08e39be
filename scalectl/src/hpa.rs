//! The HPA v2 controller's decision for one External metric (`AverageValue`
//! or `Value`), following upstream `pkg/controller/podautoscaler`
//! (replica_calculator.go and horizontal.go): the replica count from the
//! metric within the tolerance (by the cluster's `ToleranceRule`), the first
//! sync's recommendation, the stabilization windows, the scaling policies
//! with `selectPolicy` and their event record, the older path an HPA without
//! `behavior` takes, and the min/max clamps. Each rule names its upstream
//! function where it is implemented.
//!
//! Exact as upstream is: time is integer milliseconds (upstream compares
//! `time.Time`s, so an event exactly a window old is out of it, never in by
//! a binary fraction), and quantities are integer milli-units divided as
//! upstream divides them (`float64(usage) / float64(target)`).
//!
//! This module holds only the controller's arithmetic (`spec` what it
//! reads); the world it acts on (queue, pods, metric lag) is simulated in
//! `plan`, and which HPAs exist at all is `validation`'s.

mod spec;

pub use spec::{
    DOWNSCALE_STABILIZATION, Policy, Rules, SYNC_PERIOD, SYNC_PERIOD_MS, Select, Spec, SpecError,
    TOLERANCE, Target, other_metrics,
};

use crate::quantity::Milli;

/// How the controller applies its tolerance, which depends on the
/// Kubernetes version and the `HPAConfigurableTolerance` gate
/// (`cluster::Cluster::tolerance_rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToleranceRule {
    /// Before 1.33: `math.Abs(1.0-usageRatio) <= tolerance` holds the
    /// count. In floating point `|1 - 1.1|` is 0.10000000000000009, so an
    /// exact ratio of 1.1 acts; 0.9 holds.
    #[default]
    Absolute,
    /// 1.33 and later, the gate off: `Tolerances.isWithin`,
    /// `1 - 0.1 <= ratio <= 1 + 0.1`, inclusive at both ends;
    /// `behavior.*.tolerance` is ignored (`tolerancesForHpa`).
    Within,
    /// The gate on (default from 1.35): `isWithin` with each direction's
    /// `behavior.*.tolerance`, the controller's 0.1 where unset.
    PerDirection,
}

impl ToleranceRule {
    /// `tolerancesForHpa`: the tolerances the controller applies to `spec`.
    pub fn tolerances(self, spec: &Spec) -> Tolerances {
        match self {
            ToleranceRule::Absolute => Tolerances::Absolute(TOLERANCE),
            ToleranceRule::Within => Tolerances::Within {
                down: TOLERANCE,
                up: TOLERANCE,
            },
            ToleranceRule::PerDirection => Tolerances::Within {
                down: spec.down.tolerance.unwrap_or(TOLERANCE),
                up: spec.up.tolerance.unwrap_or(TOLERANCE),
            },
        }
    }
}

/// The tolerances one sync applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerances {
    /// `|1 - ratio| <= tolerance` holds (before 1.33).
    Absolute(f64),
    /// `1 - down <= ratio <= 1 + up` holds (`Tolerances.isWithin`).
    Within {
        /// The tolerance below 1.
        down: f64,
        /// The tolerance above 1.
        up: f64,
    },
}

impl Tolerances {
    /// Whether `ratio` is close enough to 1 to change nothing. NaN (0 / 0)
    /// is not.
    pub fn holds(self, ratio: f64) -> bool {
        match self {
            Tolerances::Absolute(t) => (1.0 - ratio).abs() <= t,
            Tolerances::Within { down, up } => (1.0 - down) <= ratio && ratio <= (1.0 + up),
        }
    }
}

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

/// `int32(math.Ceil(x))`, saturating where Go's conversion is undefined
/// (counts past 2^31 replicas, which no valid HPA reaches: maxReplicas is
/// an int32 and clamps first).
fn ceil_i32(x: f64) -> i32 {
    x.ceil() as i32
}

/// The replica count an `AverageValue` metric asks for
/// (`GetExternalPerPodMetricReplicas`): `ceil(usage / target)` in
/// milli-units, unless the ratio to the current count is within the
/// tolerances.
pub fn metric_replicas(metric: Milli, target: Milli, status_replicas: i32, t: Tolerances) -> i32 {
    let (usage, target) = (metric.0 as f64, target.0 as f64);
    let ratio = usage / (target * f64::from(status_replicas));
    if t.holds(ratio) {
        return status_replicas;
    }
    // Upstream clamps this one to MaxInt32 explicitly; `as` saturates.
    ceil_i32(usage / target)
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
pub fn proposal(spec: &Spec, t: Tolerances, metric: Milli, replicas: Replicas) -> Option<i32> {
    match spec.target {
        Target::AverageValue(target) => Some(metric_replicas(metric, target, replicas.status, t)),
        // getUsageRatioReplicaCount, with the spec replicas as current.
        Target::Value(target) => {
            let ratio = metric.0 as f64 / target.0 as f64;
            if replicas.spec == 0 {
                // "Scale to zero or n pods depending on usageRatio".
                Some(ceil_i32(ratio))
            } else if t.holds(ratio) {
                Some(replicas.spec)
            } else if replicas.status == 0 {
                None
            } else {
                Some(ceil_i32(ratio * f64::from(replicas.ready)))
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

/// Seconds (an API field) as the controller's milliseconds.
fn ms(seconds: i32) -> i64 {
    i64::from(seconds) * 1000
}

/// One direction's record of scale events (horizontal.go
/// `timestampedScaleEvent`), for the policies' per-period limits.
#[derive(Debug, Clone, Default, PartialEq)]
struct ScaleEvents(Vec<ScaleEvent>);

#[derive(Debug, Clone, Copy, PartialEq)]
struct ScaleEvent {
    /// Milliseconds.
    at: i64,
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
    fn store(&mut self, now: i64, change: i32, longest_period: i32) {
        let cutoff = now - ms(longest_period);
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
    /// seconds, the cutoff itself excluded (`timestamp.After(cutoff)`).
    fn changed_in(&self, now: i64, period: i32) -> i32 {
        let cutoff = now - ms(period);
        self.0
            .iter()
            .filter(|e| e.at > cutoff)
            .map(|e| e.change)
            .sum()
    }
}

/// `getLongestPolicyPeriod`.
fn longest_period(rules: &Rules) -> i32 {
    rules.policies.iter().map(Policy::period).max().unwrap_or(0)
}

/// The controller's memory between syncs for one HPA, and the cluster's
/// tolerance rule it applies.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    rule: ToleranceRule,
    /// (milliseconds, replicas).
    recommendations: Vec<(i64, i32)>,
    /// The first sync's record of the current count has been made.
    seeded: bool,
    /// The controller itself scaled the target to 0 (the ScaledToZero
    /// condition), so it may scale it up from 0 again.
    scaled_to_zero: bool,
    up_events: ScaleEvents,
    down_events: ScaleEvents,
}

impl Controller {
    /// A controller applying `rule` (`Controller::default()` has the
    /// project floor's, `ToleranceRule::Absolute`).
    pub fn new(rule: ToleranceRule) -> Self {
        Self {
            rule,
            ..Self::default()
        }
    }

    /// One sync at `now_ms` (milliseconds): the new replica count for a
    /// metric value. `replicas.spec` is the current count the controller
    /// acts on.
    pub fn sync(&mut self, spec: &Spec, now_ms: i64, metric: Milli, replicas: Replicas) -> i32 {
        let t = self.rule.tolerances(spec);
        self.sync_proposals(
            spec,
            now_ms,
            replicas,
            &[proposal(spec, t, metric, replicas)],
        )
    }

    /// The same for an HPA with several metrics, given each metric's
    /// proposal (`None` for one that could not be read): upstream scales on
    /// the largest (`combine`). The plan simulates only the queue metric;
    /// this is the controller's side of the rest.
    pub fn sync_proposals(
        &mut self,
        spec: &Spec,
        now: i64,
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
    fn store_scale_event(&mut self, spec: &Spec, now: i64, from: i32, to: i32) {
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
    fn stabilize(&mut self, spec: &Spec, now: i64, current: i32, proposed: i32) -> i32 {
        let up_cutoff = now - ms(spec.up.stabilization);
        let down_cutoff = now - ms(spec.down.stabilization);
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
    fn stabilize_without_behavior(&mut self, now: i64, proposed: i32) -> i32 {
        let cutoff = now - ms(DOWNSCALE_STABILIZATION);
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
    fn limit(&self, spec: &Spec, now: i64, current: i32, desired: i32) -> i32 {
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
    fn period_start(&self, now: i64, current: i32, period: i32) -> i32 {
        current - self.up_events.changed_in(now, period) + self.down_events.changed_in(now, period)
    }

    /// `calculateScaleUpLimitWithScalingRules`.
    fn scale_up_limit(&self, rules: &Rules, now: i64, current: i32) -> i32 {
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
                // Rounded up, as upstream: else a small fleet never grows.
                Policy::Percent { value, .. } => {
                    ceil_i32(f64::from(start) * (1.0 + f64::from(value) / 100.0))
                }
            };
            result = pick(result, proposed);
        }
        result
    }

    /// `calculateScaleDownLimitWithBehaviors`.
    fn scale_down_limit(&self, rules: &Rules, now: i64, current: i32) -> i32 {
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
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

    /// Whole units as milli-units.
    fn u(units: i64) -> Milli {
        Milli::from_units(units)
    }

    /// Seconds as the controller's milliseconds.
    fn at(seconds: i64) -> i64 {
        seconds * 1000
    }

    fn spec(min: i32, max: i32, target: i64, up: Rules, down: Rules) -> Spec {
        Spec {
            min,
            max,
            target: Target::AverageValue(u(target)),
            up,
            down,
            has_behavior: true,
        }
    }

    #[test]
    fn tolerance_edge() {
        let within = ToleranceRule::Within.tolerances(&spec(
            1,
            20,
            5,
            Rules::default_up(),
            Rules::default_down(),
        ));
        let replicas = |metric: i64, pods: i32| metric_replicas(Milli(metric), u(5), pods, within);
        // 4 pods, target 5: 21.9 is a ratio of 1.095, inside the tolerance.
        assert_eq!(replicas(21_900, 4), 4);
        // Exactly 1.1 is inside since 1.33 (isWithin is inclusive): 4 pods
        // and 22 messages stay at 4, as do 2 pods and 11.
        assert_eq!(replicas(22_000, 4), 4);
        assert_eq!(replicas(11_000, 2), 2);
        // Exactly 0.9 too: 18 messages on 4 pods.
        assert_eq!(replicas(18_000, 4), 4);
        // 22.5 is a ratio of 1.125: outside, ceil(22.5 / 5) = 5.
        assert_eq!(replicas(22_500, 4), 5);
        // Below: 17.5 is 0.875, outside: ceil(3.5) = 4... which is current.
        assert_eq!(replicas(17_500, 4), 4);
        assert_eq!(replicas(17_000, 4), 4);
        assert_eq!(replicas(15_000, 4), 3);
        // Before 1.33, |1 - 1.1| is 0.10000000000000009 in floats, above
        // 0.1: exactly 1.1 acts, 0.9 still holds.
        let absolute = Tolerances::Absolute(TOLERANCE);
        assert_eq!(metric_replicas(u(22), u(5), 4, absolute), 5);
        assert_eq!(metric_replicas(u(11), u(5), 2, absolute), 3);
        assert_eq!(metric_replicas(u(18), u(5), 4, absolute), 4);
    }

    #[test]
    fn targets_divide_in_milli_units_as_upstream() {
        // 21000 / 1400 = 15 exactly; (21 / 1.4).ceil() in binary is 16.
        let t = Tolerances::Absolute(TOLERANCE);
        assert_eq!(metric_replicas(u(21), Milli(1400), 1, t), 15);
        // Every target 0.1 to 10.0 in 0.1 steps, each metric a whole
        // multiple of it: the count is the multiple, never one more.
        for tenths in 1..=100i64 {
            let target = Milli(tenths * 100);
            for k in 1..=60i64 {
                let metric = Milli(target.0 * k);
                assert_eq!(
                    metric_replicas(metric, target, 1, t) as i64,
                    k.max(1),
                    "{k} x {target}"
                );
            }
        }
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
                Target::AverageValue(u(5)),
                "{value}"
            );
        }
        assert!(Spec::from_hpa(&hpa("five")).is_err());
        // Rounded up to whole milli-units, as the controller reads them:
        // never down to a target of 0.
        for (value, milli) in [("1n", 1), ("1500u", 2), ("2.5", 2500), ("1.4", 1400)] {
            assert_eq!(
                Spec::from_hpa(&hpa(value)).unwrap().target,
                Target::AverageValue(Milli(milli)),
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
        assert_eq!((spec.up.tolerance, spec.down.tolerance), (Some(0.05), None));
    }

    #[test]
    fn each_direction_takes_its_own_tolerance() {
        // 4 pods, target 5, 21.5 messages: a ratio of 1.075.
        let gated = || Controller::new(ToleranceRule::PerDirection);
        let default = spec(1, 20, 5, Rules::default_up(), Rules::default_down());
        assert_eq!(
            gated().sync(&default, 0, Milli(21_500), Replicas::settled(4)),
            4
        );
        let eager_up = Rules {
            tolerance: Some(0.05),
            ..Rules::default_up()
        };
        let eager = spec(1, 20, 5, eager_up, Rules::default_down());
        assert_eq!(
            gated().sync(&eager, 0, Milli(21_500), Replicas::settled(4)),
            5
        );
        // The up tolerance says nothing about going down: 18.5 (0.925)
        // stays within the default 0.1 below.
        assert_eq!(
            gated().sync(&eager, 0, Milli(18_500), Replicas::settled(4)),
            4
        );
        // With the gate off (1.33, 1.34) or before it exists (the floor),
        // the field is ignored: 4 stays 4.
        for rule in [ToleranceRule::Within, ToleranceRule::Absolute] {
            assert_eq!(
                Controller::new(rule).sync(&eager, 0, Milli(21_500), Replicas::settled(4)),
                4,
                "{rule:?}"
            );
        }
    }

    #[test]
    fn without_behavior_the_older_path_applies() {
        let legacy = Spec {
            has_behavior: false,
            ..spec(1, 20, 5, Rules::default_up(), Rules::default_down())
        };
        // Scale-up at most max(2 x current, 4) per sync: 1 -> 4 -> 8 -> 16
        // -> 20, where the behavior defaults give 1 -> 5 -> 10 -> 20.
        let mut c = Controller::default();
        let mut current = 1;
        let mut steps = vec![];
        for sync in 0..5 {
            current = c.sync(
                &legacy,
                i64::from(sync) * 15_000,
                u(300),
                Replicas::settled(current),
            );
            steps.push(current);
        }
        assert_eq!(steps, [4, 8, 16, 20, 20]);
        // Scale-down waits 5 minutes, the boundary included: the 20 last
        // recommended at t = 60 holds through t = 360 and goes at 375.
        assert_eq!(c.sync(&legacy, at(360), u(0), Replicas::settled(20)), 20);
        assert_eq!(c.sync(&legacy, at(375), u(0), Replicas::settled(20)), 1);
        // An older, higher recommendation scales up: 2 replicas (set by
        // hand), 20 recommended within the window, a metric asking for 2.
        let mut c = Controller::default();
        assert_eq!(c.sync(&legacy, at(0), u(100), Replicas::settled(20)), 20);
        assert_eq!(
            c.sync(&legacy, at(15), u(10), Replicas::settled(2)),
            4,
            "up, limited to max(4, 4)"
        );
    }

    #[test]
    fn the_first_sync_holds_scale_down_for_the_window() {
        // 5 replicas and an empty queue at the first sync: upstream records
        // 5 as a recommendation, so the 300 s down window holds them.
        let s = spec(1, 20, 5, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        assert_eq!(c.sync(&s, at(0), u(0), Replicas::settled(5)), 5);
        assert_eq!(c.sync(&s, at(285), u(0), Replicas::settled(5)), 5);
        assert_eq!(c.sync(&s, at(300), u(0), Replicas::settled(5)), 1);
    }

    #[test]
    fn zero_replicas_follow_upstream() {
        // A target scaled to 0 by hand: scaling is disabled, whatever the
        // metric and minReplicas (horizontal.go
        // shouldComputeMetricsForZeroReplicas: "ScalingDisabled").
        let mut spec = spec(1, 20, 5, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, at(0), u(500), Replicas::settled(0)), 0);
        spec.min = 0;
        spec.down.stabilization = 0;
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, at(0), Milli(5400), Replicas::settled(0)), 0);
        // minReplicas 0 (HPAScaleToZero) and the controller scaled to 0
        // itself: 5.4 against 5 is then ceil(1.08) = 2 from 0, not
        // "within tolerance of 1".
        let mut c = Controller::default();
        assert_eq!(c.sync(&spec, at(0), u(0), Replicas::settled(1)), 0);
        let mut from_zero = c.clone();
        assert_eq!(
            from_zero.sync(&spec, at(15), Milli(5400), Replicas::settled(0)),
            2
        );
        // No messages at 0 stays at 0 (0 / 0 is NaN: not within, ceil 0).
        assert_eq!(c.clone().sync(&spec, at(15), u(0), Replicas::settled(0)), 0);
        // minReplicas raised since: at least the new min.
        spec.min = 3;
        assert_eq!(c.sync(&spec, at(15), Milli(5400), Replicas::settled(0)), 3);
    }

    #[test]
    fn min_and_max_clamp() {
        let s = spec(
            2,
            6,
            5,
            Rules::default_up(),
            Rules {
                stabilization: 0,
                ..Rules::default_down()
            },
        );
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, at(0), u(1000), Replicas::settled(2)),
            6,
            "clamped to max"
        );
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, at(0), u(0), Replicas::settled(4)),
            2,
            "clamped to min"
        );
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, at(0), u(0), Replicas::settled(1)),
            2,
            "below min: raised to min"
        );
    }

    #[test]
    fn scale_up_limited_to_4_pods_or_100_percent_per_15_s() {
        let s = spec(1, 100, 1, Rules::default_up(), Rules::default_down());
        let mut c = Controller::default();
        // From 1: max(1 + 4, 2 * 1) = 5.
        assert_eq!(c.sync(&s, at(0), u(100), Replicas::settled(1)), 5);
        // 15 s later the window has passed: max(5 + 4, 10) = 10.
        assert_eq!(c.sync(&s, at(15), u(100), Replicas::settled(5)), 10);
        assert_eq!(c.sync(&s, at(30), u(100), Replicas::settled(10)), 20);
        // Within the same period, nothing more is allowed.
        assert_eq!(c.sync(&s, at(35), u(100), Replicas::settled(20)), 20);
    }

    #[test]
    fn select_policy_min_takes_the_smaller_step() {
        let up = Rules {
            select: Select::Min,
            ..Rules::default_up()
        };
        let s = spec(1, 100, 1, up, Rules::default_down());
        let mut c = Controller::default();
        // min(1 + 4, 2) = 2.
        assert_eq!(c.sync(&s, at(0), u(100), Replicas::settled(1)), 2);
        let mut c = Controller::default();
        // From 10: min(14, 20) = 14.
        assert_eq!(c.sync(&s, at(0), u(100), Replicas::settled(10)), 14);
    }

    #[test]
    fn stabilization_holds_a_scale_down() {
        let down = Rules {
            stabilization: 60,
            policies: vec![Policy::Percent {
                value: 100,
                period: 15,
            }],
            select: Select::Max,
            tolerance: None,
        };
        let s = spec(1, 20, 5, Rules::default_up(), down);
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, at(0), u(50), Replicas::settled(10)),
            10,
            "ceil(50 / 5) = 10: no change"
        );
        // The queue empties: the recommendation is 1, but the highest within
        // the last 60 s is still 10.
        assert_eq!(c.sync(&s, at(15), u(0), Replicas::settled(10)), 10);
        assert_eq!(c.sync(&s, at(45), u(0), Replicas::settled(10)), 10);
        // At 75 s the 10 from t=0 is out of the window.
        assert_eq!(c.sync(&s, at(75), u(0), Replicas::settled(10)), 1);
    }

    #[test]
    fn scale_down_percent_policy_rounds_down_and_counts_the_period() {
        let down = Rules {
            stabilization: 0,
            policies: vec![Policy::Percent {
                value: 50,
                period: 60,
            }],
            select: Select::Max,
            tolerance: None,
        };
        let s = spec(1, 20, 5, Rules::default_up(), down);
        let mut c = Controller::default();
        assert_eq!(
            c.sync(&s, at(0), u(0), Replicas::settled(9)),
            4,
            "9 * 0.5 = 4.5, truncated"
        );
        // Still in the same 60 s: the period started at 9, 5 already removed.
        assert_eq!(c.sync(&s, at(15), u(0), Replicas::settled(4)), 4);
        assert_eq!(c.sync(&s, at(61), u(0), Replicas::settled(4)), 2);
    }
}
