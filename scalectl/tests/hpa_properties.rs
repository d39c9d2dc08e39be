//! Properties of `scalectl::hpa::Controller` that must hold whatever the
//! HPA and the metric series: proptest draws random HPAs (either target
//! type, with or without `behavior`, random policies and windows) and
//! random metric series, runs one sync per 15 s with the controller's own
//! decisions applied, and checks every sync.

use proptest::prelude::*;
use scalectl::hpa::{Controller, Policy, Replicas, Rules, Select, Spec, Target, ToleranceRule};
use scalectl::quantity::Milli;

fn policy() -> impl Strategy<Value = Policy> {
    let period = prop::sample::select(vec![15, 30, 60, 120, 300]);
    prop_oneof![
        (1..=20i32, period.clone()).prop_map(|(value, period)| Policy::Pods { value, period }),
        (1..=300i32, period).prop_map(|(value, period)| Policy::Percent { value, period }),
    ]
}

fn rules(percent_cap: i32) -> impl Strategy<Value = Rules> {
    (
        prop::sample::select(vec![0, 15, 60, 120, 300]),
        prop::collection::vec(policy(), 1..=3),
        prop::sample::select(vec![Select::Max, Select::Min, Select::Disabled]),
        prop::sample::select(vec![None, Some(0.0), Some(0.05), Some(0.3)]),
    )
        .prop_map(move |(stabilization, policies, select, tolerance)| Rules {
            stabilization,
            // A scale-down Percent above 100 would ask for negative pods.
            policies: policies
                .into_iter()
                .map(|p| match p {
                    Policy::Percent { value, period } => Policy::Percent {
                        value: value.min(percent_cap),
                        period,
                    },
                    pods => pods,
                })
                .collect(),
            select,
            tolerance,
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..=5i32,
        1..=40i32,
        prop_oneof![
            (1..=20i64).prop_map(|v| Target::AverageValue(Milli::from_units(v))),
            (1..=100i64).prop_map(|v| Target::Value(Milli::from_units(v))),
        ],
        rules(300),
        rules(100),
        any::<bool>(),
    )
        .prop_map(|(min, extra, target, up, down, has_behavior)| Spec {
            min,
            max: min + extra,
            target,
            up,
            down,
            has_behavior,
        })
}

/// A metric series, one value per sync: random walks and jumps, queue
/// lengths from 0 to 1,000.
fn series() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0..=1000u32, 1..=60)
}

/// The replica count at `t`: after the last sync at or before it (the
/// history holds (time, count after that sync), the first entry the start).
fn replicas_at(history: &[(f64, i32)], t: f64) -> i32 {
    history
        .iter()
        .take_while(|(at, _)| *at <= t)
        .last()
        .map_or(history[0].1, |(_, n)| *n)
}

/// A policy's limit from the count at its period's start, as upstream
/// computes it (`calculateScale{Up,Down}Limit…`).
fn policy_limit(policy: &Policy, start: i32, up: bool) -> i32 {
    match (*policy, up) {
        (Policy::Pods { value, .. }, true) => start + value,
        (Policy::Pods { value, .. }, false) => start - value,
        (Policy::Percent { value, .. }, true) => {
            (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
        }
        (Policy::Percent { value, .. }, false) => {
            (f64::from(start) * (1.0 - f64::from(value) / 100.0)) as i32
        }
    }
}

/// `periodSeconds` as seconds on the test's clock.
fn period(policy: &Policy) -> f64 {
    f64::from(policy.period())
}

fn longest(rules: &Rules) -> f64 {
    rules.policies.iter().map(period).fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_sync_keeps_the_invariants(spec in spec(), metrics in series(), start in 0..=45i32) {
        // Start inside [min, max]: the controller then never leaves it.
        let start = start.clamp(spec.min, spec.max);
        // Each direction's own tolerance (HPAConfigurableTolerance on).
        let mut controller = Controller::new(ToleranceRule::PerDirection);
        let mut current = start;
        let mut history = vec![(-1.0, start)];
        for (i, &metric) in metrics.iter().enumerate() {
            let now = i as f64 * 15.0;
            let replicas = Replicas::settled(current);
            let desired = controller.sync(
                &spec,
                i as i64 * 15_000,
                Milli::from_units(i64::from(metric)),
                replicas,
            );

            // 1. Within [min, max] after every sync.
            prop_assert!(
                (spec.min..=spec.max).contains(&desired),
                "{desired} outside [{}, {}] from {current}", spec.min, spec.max
            );

            // 2. Within tolerance, no change: with `behavior` the
            // stabilization can only hold the current count, never move it.
            // (Without it, an older higher recommendation may still scale
            // up: upstream's older path, tested in hpa.rs.)
            let ratio = match spec.target {
                Target::AverageValue(target) => f64::from(metric) / (target.as_f64() * f64::from(current)),
                Target::Value(target) => f64::from(metric) / target.as_f64(),
            };
            let (down, up) = (spec.down.tolerance.unwrap_or(0.1), spec.up.tolerance.unwrap_or(0.1));
            let within = (1.0 - down..=1.0 + up).contains(&ratio);
            // At 0 replicas upstream ignores the tolerance (scale from zero).
            if spec.has_behavior && within && current != 0 {
                prop_assert_eq!(desired, current, "ratio {} on {} replicas", ratio, current);
            }

            // 3. The policies bound every change: under selectPolicy Min
            // each policy holds, under Max the most permissive one does
            // (a limit below the current count allows no change, not a
            // change the other way). The count at a period's start comes
            // from the whole history; it agrees with upstream's event
            // record while the other direction's longest period covers this
            // one (else upstream may have reused an event slot, and sees
            // less).
            if spec.has_behavior && desired != current {
                let up = desired > current;
                let (rules, other) = if up { (&spec.up, &spec.down) } else { (&spec.down, &spec.up) };
                prop_assert!(rules.select != Select::Disabled, "moved with {:?} disabled", rules);
                if rules.policies.iter().all(|p| period(p) <= longest(other)) {
                    let limits: Vec<i32> = rules
                        .policies
                        .iter()
                        .map(|p| policy_limit(p, replicas_at(&history, now - period(p)), up))
                        .collect();
                    let holds = |limit: i32| {
                        if up { desired <= limit.max(current) } else { desired >= limit.min(current) }
                    };
                    let binding: Vec<i32> = match (rules.select, up) {
                        (Select::Min, _) => limits.clone(),
                        (Select::Max, true) => limits.iter().max().copied().into_iter().collect(),
                        (Select::Max, false) => limits.iter().min().copied().into_iter().collect(),
                        (Select::Disabled, _) => vec![],
                    };
                    for limit in binding {
                        prop_assert!(
                            holds(limit),
                            "{} -> {} past a policy limit {} (limits {:?}, {:?})",
                            current, desired, limit, limits, rules
                        );
                    }
                }
            }
            history.push((now, desired));
            current = desired;
        }
    }

    #[test]
    fn a_settled_fleet_without_load_scales_to_min_and_stays(spec in spec(), start in 0..=45i32) {
        // Eventually (policies allow some change every period, windows
        // expire) an empty queue brings any fleet down to minReplicas, and
        // nothing then moves it.
        let start = start.clamp(spec.min, spec.max);
        let mut controller = Controller::default();
        let mut current = start;
        // Long enough for the slowest drawn policy (1 pod per 300 s from 45).
        for i in 0..1000 {
            current = controller.sync(&spec, i64::from(i) * 15_000, Milli(0), Replicas::settled(current));
        }
        if spec.down.select != Select::Disabled || !spec.has_behavior {
            prop_assert_eq!(current, spec.min);
        } else {
            prop_assert_eq!(current, start, "scale-down disabled holds the count");
        }
    }
}
