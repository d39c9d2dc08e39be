//! `plan` against an exact re-statement of the controller's rules, with
//! fractional clock phases and fractional targets: where binary fractions
//! once crept in (a sync at 17.4 s read as 17.400000000000002, a target of
//! 1.4 divided as a float).
//!
//! The reference below is written from upstream's horizontal.go and
//! replica_calculator.go, not from `scalectl::hpa`: time is integer
//! milliseconds computed from the phase (`phase + k × 15 s`), quantities are
//! integer milli-units, and the float steps are upstream's own
//! (`float64(usage) / (float64(target) * float64(replicas))`). It keeps every
//! recommendation and event instead of reusing slots: the same counts as
//! upstream's slot reuse as long as both directions' longest policy periods
//! are equal, which the generated HPAs ensure.

use proptest::prelude::*;
use scalectl::cluster::{Cluster, Version};
use scalectl::hpa::{Policy, Rules, Select, Spec, Target, ToleranceRule};
use scalectl::plan::{Phases, Scenario, plan};
use scalectl::quantity::Milli;

/// The controller's state, re-stated.
struct Reference {
    rule: ToleranceRule,
    /// (ms, recommendation), every one ever made.
    recommendations: Vec<(i64, i32)>,
    /// (ms, pods added) and (ms, pods removed).
    ups: Vec<(i64, i32)>,
    downs: Vec<(i64, i32)>,
}

impl Reference {
    fn new(rule: ToleranceRule) -> Self {
        Self {
            rule,
            recommendations: vec![],
            ups: vec![],
            downs: vec![],
        }
    }

    /// `GetExternalPerPodMetricReplicas` with `tolerancesForHpa`.
    fn proposal(&self, spec: &Spec, usage: i64, current: i32) -> i32 {
        let Target::AverageValue(Milli(target)) = spec.target else {
            unreachable!("the generated HPAs use AverageValue")
        };
        let ratio = usage as f64 / (target as f64 * f64::from(current));
        let within = match self.rule {
            ToleranceRule::Absolute => (1.0 - ratio).abs() <= 0.1,
            ToleranceRule::Within => (1.0 - 0.1..=1.0 + 0.1).contains(&ratio),
            ToleranceRule::PerDirection => {
                let down = spec.down.tolerance.unwrap_or(0.1);
                let up = spec.up.tolerance.unwrap_or(0.1);
                (1.0 - down..=1.0 + up).contains(&ratio)
            }
        };
        if within {
            current
        } else {
            (usage as f64 / target as f64).ceil() as i32
        }
    }

    fn changed(events: &[(i64, i32)], now: i64, period_s: i32) -> i32 {
        let cutoff = now - i64::from(period_s) * 1000;
        events
            .iter()
            .filter(|(at, _)| *at > cutoff)
            .map(|(_, n)| n)
            .sum()
    }

    /// `calculateScale{Up,Down}Limit…`: the selected policy's limit.
    fn policy_limit(&self, rules: &Rules, now: i64, current: i32, up: bool) -> i32 {
        let limits = rules.policies.iter().map(|p| {
            let start = current - Self::changed(&self.ups, now, p.period())
                + Self::changed(&self.downs, now, p.period());
            match (*p, up) {
                (Policy::Pods { value, .. }, true) => start + value,
                (Policy::Pods { value, .. }, false) => start - value,
                (Policy::Percent { value, .. }, true) => {
                    (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
                }
                (Policy::Percent { value, .. }, false) => {
                    (f64::from(start) * (1.0 - f64::from(value) / 100.0)) as i32
                }
            }
        });
        match (rules.select, up) {
            (Select::Disabled, _) => current,
            (Select::Max, true) | (Select::Min, false) => limits.max().unwrap_or(current),
            (Select::Min, true) | (Select::Max, false) => limits.min().unwrap_or(current),
        }
    }

    fn sync(&mut self, spec: &Spec, now: i64, usage: i64, current: i32) -> i32 {
        if self.recommendations.is_empty() {
            self.recommendations.push((now, current));
        }
        if current > spec.max {
            return spec.max;
        }
        if current < spec.min {
            return spec.min;
        }
        let proposed = self.proposal(spec, usage, current);
        let desired = if spec.has_behavior {
            let in_window = |window_s: i32| {
                let cutoff = now - i64::from(window_s) * 1000;
                self.recommendations
                    .iter()
                    .filter(move |(at, _)| *at > cutoff)
                    .map(|(_, r)| *r)
            };
            let up = in_window(spec.up.stabilization).fold(proposed, i32::min);
            let down = in_window(spec.down.stabilization).fold(proposed, i32::max);
            self.recommendations.push((now, proposed));
            let stabilized = current.max(up).min(down);
            if stabilized > current {
                let limit = self.policy_limit(&spec.up, now, current, true).max(current);
                stabilized.min(spec.max).min(limit)
            } else if stabilized < current {
                let limit = self
                    .policy_limit(&spec.down, now, current, false)
                    .min(current);
                stabilized.max(spec.min).max(limit)
            } else {
                stabilized
            }
        } else {
            // Five minutes, the boundary included.
            let cutoff = now - 300_000;
            let highest = self
                .recommendations
                .iter()
                .filter(|(at, _)| *at >= cutoff)
                .map(|(_, r)| *r)
                .fold(proposed, i32::max);
            self.recommendations.push((now, proposed));
            highest
                .min(spec.max)
                .min((2 * current).max(4))
                .max(spec.min)
        };
        if spec.has_behavior && desired > current {
            self.ups.push((now, desired - current));
        } else if spec.has_behavior && desired < current {
            self.downs.push((now, current - desired));
        }
        desired
    }
}

/// Rules whose longest policy period is `longest`, with maybe a shorter
/// second policy.
fn rules(longest: i32, up: bool) -> impl Strategy<Value = Rules> {
    let policy = move |period: i32| {
        prop_oneof![
            (1..=6i32).prop_map(move |value| Policy::Pods { value, period }),
            (10..=if up { 300 } else { 100 })
                .prop_map(move |value| Policy::Percent { value, period }),
        ]
    };
    (
        prop::sample::select(vec![0, 15, 30, 45, 60, 120, 300]),
        policy(longest),
        prop::option::of(
            prop::sample::select(vec![15, 30]).prop_flat_map(move |p| policy(p.min(longest))),
        ),
        prop::sample::select(vec![
            Select::Max,
            Select::Max,
            Select::Min,
            Select::Disabled,
        ]),
        prop::sample::select(vec![None, Some(0.0), Some(0.05), Some(0.2)]),
    )
        .prop_map(|(stabilization, first, second, select, tolerance)| Rules {
            stabilization,
            policies: std::iter::once(first).chain(second).collect(),
            select,
            tolerance,
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec![15, 30, 60]),
        1..=3i32,
        0..=30i32,
        // Milli-units from 0.1 to 10: every fractional target, 1.4 and 2.3
        // among them.
        prop_oneof![(1..=100i64).prop_map(|t| t * 100), 100..=10_000i64],
        any::<bool>(),
    )
        .prop_flat_map(|(longest, min, extra, target, has_behavior)| {
            (rules(longest, true), rules(longest, false)).prop_map(move |(up, down)| Spec {
                min,
                max: min + extra,
                target: Target::AverageValue(Milli(target)),
                up,
                down,
                has_behavior,
            })
        })
}

/// Phases on the plan's 0.1 s grid, fractional: `2.4`, `13.7`.
fn phases() -> impl Strategy<Value = Phases> {
    (0..50u32, 0..150u32, 0..150u32).prop_map(|(stats, scrape, sync)| Phases {
        stats: f64::from(stats) / 10.0,
        scrape: f64::from(scrape) / 10.0,
        sync: f64::from(sync) / 10.0,
    })
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Runs `scenario` through `plan` and the reference, sync by sync.
fn compare(spec: &Spec, scenario: &Scenario) -> Result<(), TestCaseError> {
    let result = plan(spec, scenario);
    let mut reference = Reference::new(scenario.cluster.tolerance_rule());
    let phase_ms = i64::from((scenario.phases.sync * 10.0).round() as i32) * 100;
    let mut current = spec.min.max(scenario.initial_replicas);
    prop_assert!(!result.ticks.is_empty());
    for (k, tick) in result.ticks.iter().enumerate() {
        let now = phase_ms + k as i64 * 15_000;
        prop_assert_eq!(
            (tick.t * 1000.0).round() as i64,
            now,
            "sync {} on the grid",
            k
        );
        let usage = tick.metric as i64 * 1000;
        let expected = reference.sync(spec, now, usage, current);
        prop_assert_eq!(
            tick.replicas,
            expected,
            "sync {} at {} ms: metric {} on {} replicas",
            k,
            now,
            tick.metric,
            current
        );
        current = expected;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn plan_makes_the_decisions_the_exact_rules_make(
        spec in spec(),
        phases in phases(),
        burst in 0..=400u32,
        service_tenths in 20..=80u32,
        version in prop::sample::select(vec![30u32, 33, 35]),
    ) {
        let scenario = Scenario {
            burst,
            service_time: f64::from(service_tenths) / 10.0,
            phases,
            cluster: Cluster::with_defaults(Version(version)),
            horizon: 900.0,
            ..Scenario::default()
        };
        compare(&spec, &scenario)?;
    }

    /// A queue of exactly k targets (21 jobs on a 1.4 target), held while
    /// the jobs last: where dividing units as floats asks for k + 1. The
    /// scale-up is left free (default rules, room to max) so that the
    /// count shows.
    #[test]
    fn a_queue_of_whole_targets_asks_for_exactly_that_many(
        spec in spec(),
        phases in phases(),
        tenths in 1..=100i64,
        j in 1..=8i64,
        version in prop::sample::select(vec![30u32, 33, 35]),
    ) {
        // The smallest k with k × tenths / 10 whole, times j.
        let k = j * (10 / gcd(tenths, 10));
        let spec = Spec {
            target: Target::AverageValue(Milli(tenths * 100)),
            max: 100,
            up: Rules::default_up(),
            has_behavior: true,
            ..spec
        };
        let scenario = Scenario {
            burst: u32::try_from(tenths * k / 10).unwrap_or(u32::MAX),
            service_time: 600.0,
            phases,
            cluster: Cluster::with_defaults(Version(version)),
            horizon: 300.0,
            ..Scenario::default()
        };
        compare(&spec, &scenario)?;
    }
}
