//! Upstream's own test tables, ported case for case, from kubernetes/kubernetes
//! at 88cca8337e1d: pkg/controller/podautoscaler/horizontal_test.go and
//! replica_calculator_test.go. Each test names the upstream test it ports;
//! case names are upstream's. Where a case depends on a test-only setting
//! upstream (its `scaleUpLimitFactor = 8`), the expected value is the
//! production one, and the case says so.
//!
//! Upstream builds events and recommendations from `time.Now()` minus an
//! age; here "now" is a fixed `NOW` and each record is `NOW - ms_of(age)`.

// The tables are tuples, field for field as upstream's structs.
#![allow(clippy::type_complexity)]

use super::*;
use crate::quantity::Milli;

const NOW: i64 = 10_000_000;

/// An age in seconds, as upstream writes it, in the controller's milliseconds.
fn ms_of(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// `generateScalingRules(pods, podsPeriod, percent, percentPeriod, window)`:
/// select Max; a Pods policy if `pods` is set, then a Percent policy if
/// `percent` is; neither keeps the direction's default policies
/// (`copyHPAScalingRules`).
fn g(
    pods: i32,
    pods_period: i32,
    percent: i32,
    percent_period: i32,
    window: i32,
    default: Rules,
) -> Rules {
    let mut policies = vec![];
    if pods != 0 {
        policies.push(Policy::Pods {
            value: pods,
            period: pods_period,
        });
    }
    if percent != 0 {
        policies.push(Policy::Percent {
            value: percent,
            period: percent_period,
        });
    }
    Rules {
        stabilization: window,
        policies: if policies.is_empty() {
            default.policies
        } else {
            policies
        },
        select: Select::Max,
        tolerance: None,
    }
}

fn up_g(
    pods: i32,
    pods_period: i32,
    percent: i32,
    percent_period: i32,
    window: i32,
) -> Option<Rules> {
    Some(g(
        pods,
        pods_period,
        percent,
        percent_period,
        window,
        Rules::default_up(),
    ))
}

fn down_g(
    pods: i32,
    pods_period: i32,
    percent: i32,
    percent_period: i32,
    window: i32,
) -> Option<Rules> {
    Some(g(
        pods,
        pods_period,
        percent,
        percent_period,
        window,
        Rules::default_down(),
    ))
}

/// `generateEventsUniformDistribution(raw, period)`: one event in the
/// middle of each of `raw.len()` equal segments of the last `period`
/// seconds, oldest first; upstream truncates each age to whole seconds.
fn uniform(raw: &[i32], period: i32) -> ScaleEvents {
    let segment = f64::from(period) / raw.len() as f64;
    ScaleEvents(
        raw.iter()
            .enumerate()
            .map(|(i, &change)| {
                let age = (f64::from(period) - segment * (i + 1) as f64 + segment / 2.0).trunc();
                ScaleEvent {
                    at: NOW - ms_of(age),
                    change,
                    outdated: false,
                }
            })
            .collect(),
    )
}

fn events(list: &[(i32, f64, bool)]) -> ScaleEvents {
    ScaleEvents(
        list.iter()
            .map(|&(change, age, outdated)| ScaleEvent {
                at: NOW - ms_of(age),
                change,
                outdated,
            })
            .collect(),
    )
}

fn spec_with(min: i32, max: i32, up: Option<Rules>, down: Option<Rules>) -> Spec {
    Spec {
        min,
        max,
        target: Target::AverageValue(Milli(1000)),
        up: up.unwrap_or_else(Rules::default_up),
        down: down.unwrap_or_else(Rules::default_down),
        has_behavior: true,
    }
}

/// replica_calculator_test.go, the External cases: `Value` targets are
/// `externalMetric` (GetExternalMetricReplicas), `AverageValue` targets
/// `externalPerPodMetric` (GetExternalPerPodMetricReplicas). Levels and
/// targets there are milli-units.
#[test]
fn replica_calc_external_cases() {
    // (upstream test, target, current, ready pods, metric (milli), tolerances (down, up), expected)
    let cases: &[(&str, Target, i32, i32, f64, (f64, f64), i32)] = &[
        (
            "TestReplicaCalcScaleUpCMExternal",
            Target::Value(Milli(4400)),
            1,
            1,
            8600.0,
            (0.1, 0.1),
            2,
        ),
        // "Would expect 6 if we didn't ignore unready pods".
        (
            "TestReplicaCalcScaleUpCMExternalIgnoresUnreadyPods",
            Target::Value(Milli(4400)),
            3,
            1,
            8600.0,
            (0.1, 0.1),
            2,
        ),
        (
            "TestReplicaCalcScaleUpCMExternalNoLabels",
            Target::Value(Milli(4400)),
            1,
            1,
            8600.0,
            (0.1, 0.1),
            2,
        ),
        (
            "TestReplicaCalcScaleDownCMExternal",
            Target::Value(Milli(14334)),
            5,
            5,
            8600.0,
            (0.1, 0.1),
            3,
        ),
        (
            "TestReplicaCalcToleranceCMExternal",
            Target::Value(Milli(8888)),
            3,
            3,
            8600.0,
            (0.1, 0.1),
            3,
        ),
        (
            "TestReplicaCalcConfigurableToleranceCMExternal",
            Target::Value(Milli(8800)),
            3,
            3,
            8900.0,
            (0.1, 0.01),
            4,
        ),
        (
            "TestReplicaCalcScaleUpPerPodCMExternal",
            Target::AverageValue(Milli(2150)),
            3,
            3,
            8600.0,
            (0.1, 0.1),
            4,
        ),
        (
            "TestReplicaCalcScaleDownPerPodCMExternal",
            Target::AverageValue(Milli(2867)),
            5,
            5,
            8600.0,
            (0.1, 0.1),
            3,
        ),
        (
            "TestReplicaCalcTolerancePerPodCMExternal",
            Target::AverageValue(Milli(2900)),
            3,
            3,
            8600.0,
            (0.1, 0.1),
            3,
        ),
        (
            "TestReplicaCalcConfigurableTolerancePerPodCMExternal",
            Target::AverageValue(Milli(2800)),
            3,
            3,
            8600.0,
            (0.1, 0.01),
            4,
        ),
    ];
    for &(name, target, current, ready, milli, (down, up), expected) in cases {
        let mut spec = spec_with(1, 100, None, None);
        spec.target = target;
        // Upstream's cases pass Tolerances directly (the gate's side is
        // tolerancesForHpa, tested in cluster.rs).
        let tolerances = Tolerances::Within { down, up };
        let replicas = Replicas {
            spec: current,
            status: current,
            ready,
        };
        assert_eq!(
            proposal(&spec, tolerances, Milli(milli as i64), replicas),
            Some(expected),
            "{name}"
        );
    }
}

/// TestConvertDesiredReplicasWithRules (no `behavior`).
#[test]
fn convert_desired_replicas_with_rules() {
    // (annotation, current, desired, min, max, expected)
    let cases: &[(&str, i32, i32, i32, i32, i32)] = &[
        ("prenormalized desired replicas within range", 5, 7, 3, 8, 7),
        (
            "prenormalized desired replicas < minReplicas",
            3,
            1,
            2,
            8,
            2,
        ),
        (
            "prenormalized desired zeroed replicas within range",
            1,
            0,
            0,
            10,
            0,
        ),
        (
            "maxReplicas is the limit because maxReplicas < scaleUpLimit",
            20,
            1000,
            1,
            10,
            10,
        ),
        // Upstream expects calculateScaleUpLimit(3), 24 with the test
        // package's factor of 8; the controller's factor is 2: max(6, 4).
        (
            "scaleUpLimit is the limit because scaleUpLimit < maxReplicas",
            3,
            1000,
            1,
            2000,
            6,
        ),
    ];
    for &(name, current, desired, min, max, expected) in cases {
        let spec = Spec {
            has_behavior: false,
            ..spec_with(min, max, None, None)
        };
        assert_eq!(
            without_behavior_limit(&spec, current, desired),
            expected,
            "{name}"
        );
    }
}

/// TestCalculateScaleUpLimitWithScalingRules and
/// TestCalculateScaleDownLimitWithBehaviors: Pods 2/60s and Percent 50/60s
/// under selectPolicy Min, no events.
#[test]
fn calculate_limits_with_select_min() {
    let rules = Rules {
        stabilization: 300,
        policies: vec![
            Policy::Pods {
                value: 2,
                period: 60,
            },
            Policy::Percent {
                value: 50,
                period: 60,
            },
        ],
        select: Select::Min,
        tolerance: None,
    };
    let c = Controller::default();
    assert_eq!(c.scale_up_limit(&rules, NOW, 1), 2);
    assert_eq!(c.scale_down_limit(&rules, NOW, 5), 3);
}

/// TestNormalizeDesiredReplicas (no `behavior`: stabilizeRecommendation,
/// a 5-minute window).
#[test]
fn normalize_desired_replicas_without_behavior() {
    // (name, recommendations (value, age s), prenormalized, stabilized, log length)
    let cases: &[(&str, &[(i32, f64)], i32, i32, usize)] = &[
        ("empty log", &[], 5, 5, 1),
        ("stabilize", &[(4, 120.0), (5, 60.0)], 3, 5, 3),
        ("no stabilize", &[(1, 120.0), (2, 60.0)], 3, 3, 3),
        (
            "no stabilize - old recommendations",
            &[(10, 600.0), (9, 540.0)],
            3,
            3,
            2,
        ),
        (
            "stabilize - old recommendations",
            &[(10, 600.0), (4, 60.0), (5, 120.0), (9, 540.0)],
            3,
            5,
            4,
        ),
    ];
    for &(name, recs, prenormalized, stabilized, length) in cases {
        let mut c = Controller {
            recommendations: recs.iter().map(|&(v, age)| (NOW - ms_of(age), v)).collect(),
            ..Controller::default()
        };
        assert_eq!(
            c.stabilize_without_behavior(NOW, prenormalized),
            stabilized,
            "{name}"
        );
        assert_eq!(c.recommendations.len(), length, "{name}");
    }
}

/// TestNormalizeDesiredReplicasWithBehavior
/// (stabilizeRecommendationWithBehaviors). A window a case leaves unset is 0.
#[test]
fn normalize_desired_replicas_with_behavior() {
    struct Case {
        name: &'static str,
        recs: &'static [(i32, f64)],
        current: i32,
        prenormalized: i32,
        stabilized: i32,
        stored: Option<&'static [i32]>,
        up_window: i32,
        down_window: i32,
    }
    let cases = [
        Case {
            name: "empty recommendations for scaling down",
            recs: &[],
            current: 100,
            prenormalized: 5,
            stabilized: 5,
            stored: Some(&[5]),
            up_window: 0,
            down_window: 0,
        },
        Case {
            name: "simple scale down stabilization",
            recs: &[(4, 120.0), (5, 60.0)],
            current: 100,
            prenormalized: 3,
            stabilized: 5,
            stored: Some(&[4, 5, 3]),
            up_window: 0,
            down_window: 180,
        },
        Case {
            name: "simple scale up stabilization",
            recs: &[(4, 120.0), (5, 60.0)],
            current: 1,
            prenormalized: 7,
            stabilized: 4,
            stored: Some(&[4, 5, 7]),
            up_window: 300,
            down_window: 0,
        },
        Case {
            name: "no scale down stabilization",
            recs: &[(1, 120.0), (2, 60.0)],
            current: 100,
            prenormalized: 3,
            stabilized: 3,
            stored: Some(&[1, 2, 3]),
            up_window: 300,
            down_window: 0,
        },
        Case {
            name: "no scale up stabilization",
            recs: &[(4, 120.0), (5, 60.0)],
            current: 1,
            prenormalized: 3,
            stabilized: 3,
            stored: Some(&[4, 5, 3]),
            up_window: 0,
            down_window: 300,
        },
        Case {
            name: "no scale down stabilization, reuse recommendation element",
            recs: &[(10, 600.0), (9, 540.0)],
            current: 100,
            prenormalized: 3,
            stabilized: 3,
            stored: Some(&[10, 3]),
            up_window: 0,
            down_window: 0,
        },
        Case {
            name: "no scale up stabilization, reuse recommendation element",
            recs: &[(10, 600.0), (9, 540.0)],
            current: 1,
            prenormalized: 100,
            stabilized: 100,
            stored: Some(&[10, 100]),
            up_window: 0,
            down_window: 0,
        },
        Case {
            name: "scale down stabilization, reuse one of obsolete recommendation element",
            recs: &[(10, 600.0), (4, 60.0), (5, 120.0), (9, 540.0)],
            current: 100,
            prenormalized: 3,
            stabilized: 5,
            stored: Some(&[10, 4, 5, 3]),
            up_window: 0,
            down_window: 180,
        },
        Case {
            name: "scale up stabilization, reuse one of obsolete recommendation element",
            recs: &[(10, 6000.0), (6, 60.0), (5, 120.0), (9, 180.0)],
            current: 1,
            prenormalized: 100,
            stabilized: 5,
            stored: Some(&[100, 6, 5, 9]),
            up_window: 300,
            down_window: 0,
        },
        Case {
            name: "scale up and down stabilization, do not scale up when prenormalized rec goes down",
            recs: &[(2, 6000.0), (3, 180.0)],
            current: 2,
            prenormalized: 1,
            stabilized: 2,
            stored: None,
            up_window: 300,
            down_window: 300,
        },
        Case {
            name: "scale up and down stabilization, do not scale down when prenormalized rec goes up",
            recs: &[(2, 6000.0), (1, 180.0)],
            current: 2,
            prenormalized: 3,
            stabilized: 2,
            stored: None,
            up_window: 300,
            down_window: 300,
        },
    ];
    for case in cases {
        let mut spec = spec_with(1, 1000, None, None);
        spec.up.stabilization = case.up_window;
        spec.down.stabilization = case.down_window;
        let mut c = Controller {
            recommendations: case
                .recs
                .iter()
                .map(|&(v, age)| (NOW - ms_of(age), v))
                .collect(),
            ..Controller::default()
        };
        let got = c.stabilize(&spec, NOW, case.current, case.prenormalized);
        assert_eq!(got, case.stabilized, "{}", case.name);
        if let Some(stored) = case.stored {
            let values: Vec<i32> = c.recommendations.iter().map(|(_, v)| *v).collect();
            assert_eq!(values, stored, "{}", case.name);
        }
    }
}

/// TestScalingWithRules (convertDesiredReplicasWithBehaviorRate): the
/// policies' rate limits with earlier events of both directions, and the
/// min/max clamps. Rules left out are the API defaults.
#[test]
fn scaling_with_rules() {
    type Case = (
        &'static str,
        ScaleEvents,
        ScaleEvents,
        i32,
        i32,
        Option<Rules>,
        Option<Rules>,
        i32,
        i32,
        i32,
    );
    let none = ScaleEvents::default;
    let cases: Vec<Case> = vec![
        (
            "prenormalized desired replicas within range",
            none(),
            none(),
            3,
            8,
            None,
            None,
            5,
            7,
            7,
        ),
        (
            "prenormalized desired replicas < minReplicas",
            none(),
            none(),
            2,
            8,
            None,
            None,
            3,
            1,
            2,
        ),
        (
            "prenormalized desired replicas within range when minReplicas is 0",
            none(),
            none(),
            0,
            10,
            None,
            None,
            1,
            0,
            0,
        ),
        (
            "maxReplicas is the limit because maxReplicas < scaleUpLimit",
            none(),
            none(),
            1,
            10,
            None,
            None,
            20,
            1000,
            10,
        ),
        (
            "desired replica count is more than the maximum replica count",
            none(),
            none(),
            100,
            150,
            None,
            None,
            100,
            1000,
            150,
        ),
        (
            "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
            none(),
            none(),
            1,
            2000,
            up_g(0, 0, 1, 60, 0),
            None,
            3,
            1000,
            4,
        ),
        (
            "scaleUp with default behavior",
            none(),
            none(),
            1,
            1000,
            None,
            None,
            10,
            50,
            20,
        ),
        (
            "scaleUp with pods policy larger than percent policy",
            none(),
            none(),
            1,
            1000,
            up_g(100, 60, 100, 60, 0),
            None,
            10,
            500,
            110,
        ),
        (
            "scaleUp with percent policy larger than pods policy",
            none(),
            none(),
            1,
            1000,
            up_g(2, 60, 100, 60, 0),
            None,
            10,
            500,
            20,
        ),
        (
            "scaleUp with spec MaxReplicas limitation with large pod policy",
            none(),
            none(),
            1,
            1000,
            up_g(100, 60, 0, 0, 0),
            None,
            10,
            50,
            50,
        ),
        (
            "scaleUp with spec MaxReplicas limitation with large percent policy",
            none(),
            none(),
            1,
            1000,
            up_g(10000, 60, 0, 0, 0),
            None,
            10,
            50,
            50,
        ),
        (
            "scaleUp with pod policy limitation",
            none(),
            none(),
            1,
            1000,
            up_g(30, 60, 0, 0, 0),
            None,
            10,
            50,
            40,
        ),
        (
            "scaleUp with percent policy limitation",
            none(),
            none(),
            1,
            1000,
            up_g(0, 0, 200, 60, 0),
            None,
            10,
            50,
            30,
        ),
        (
            "scaleDown with percent policy larger than pod policy",
            none(),
            none(),
            1,
            1000,
            None,
            down_g(20, 60, 1, 60, 300),
            100,
            2,
            80,
        ),
        (
            "scaleDown with pod policy larger than percent policy",
            none(),
            none(),
            1,
            1000,
            None,
            down_g(2, 60, 1, 60, 300),
            100,
            2,
            98,
        ),
        (
            "scaleDown with spec MinReplicas limitation with large pod policy",
            none(),
            none(),
            1,
            1000,
            None,
            down_g(100, 60, 0, 0, 300),
            10,
            0,
            1,
        ),
        (
            "scaleDown with spec MinReplicas limitation with large percent policy",
            none(),
            none(),
            5,
            1000,
            None,
            down_g(0, 0, 100, 60, 300),
            10,
            2,
            5,
        ),
        (
            "scaleDown with pod policy limitation",
            none(),
            none(),
            1,
            1000,
            None,
            down_g(5, 60, 0, 0, 300),
            10,
            2,
            5,
        ),
        (
            "scaleDown with percent policy limitation",
            none(),
            none(),
            1,
            1000,
            None,
            down_g(0, 0, 50, 60, 300),
            10,
            5,
            5,
        ),
        (
            "scaleUp with spec MaxReplicas limitation with large pod policy and events",
            uniform(&[1, 5, 9], 120),
            none(),
            1,
            200,
            up_g(300, 60, 0, 0, 0),
            None,
            100,
            500,
            200,
        ),
        (
            "scaleUp with spec MaxReplicas limitation with large percent policy and events",
            uniform(&[1, 5, 9], 120),
            none(),
            1,
            200,
            up_g(0, 0, 10000, 60, 0),
            None,
            100,
            500,
            200,
        ),
        (
            "scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events",
            uniform(&[1, 5, 9], 120),
            none(),
            1,
            1000,
            up_g(5, 120, 0, 0, 0),
            None,
            100,
            500,
            100,
        ),
        (
            "scaleUp with pod policy and previous scale up events",
            uniform(&[1, 5, 9], 120),
            none(),
            1,
            1000,
            up_g(150, 120, 0, 0, 0),
            None,
            100,
            500,
            235,
        ),
        (
            "scaleUp with percent policy and previous scale up events",
            uniform(&[1, 5, 9], 120),
            none(),
            1,
            1000,
            up_g(0, 0, 200, 120, 0),
            None,
            100,
            500,
            255,
        ),
        (
            "scaleUp with percent policy and previous scale up and down events",
            uniform(&[4], 120),
            uniform(&[2], 120),
            1,
            1000,
            up_g(0, 0, 300, 300, 0),
            None,
            6,
            24,
            16,
        ),
        (
            "scaleDown with default policy and previous events",
            none(),
            uniform(&[1, 5, 9], 120),
            1,
            1000,
            None,
            None,
            10,
            5,
            5,
        ),
        (
            "scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events",
            none(),
            uniform(&[1, 5, 9], 120),
            1,
            1000,
            None,
            down_g(115, 120, 0, 0, 300),
            100,
            0,
            1,
        ),
        (
            "scaleDown with spec MinReplicas limitation with large pod policy and previous events",
            none(),
            uniform(&[1, 5, 9], 120),
            5,
            1000,
            None,
            down_g(130, 120, 0, 0, 300),
            100,
            0,
            5,
        ),
        (
            "scaleDown with spec MinReplicas limitation with large percent policy and previous events",
            none(),
            uniform(&[1, 5, 9], 120),
            5,
            1000,
            None,
            down_g(0, 0, 100, 120, 300),
            100,
            2,
            5,
        ),
        (
            "scaleDown with pod policy limitation and previous events",
            none(),
            uniform(&[1, 5, 9], 120),
            1,
            1000,
            None,
            down_g(5, 120, 0, 0, 300),
            100,
            2,
            100,
        ),
        (
            "scaleDown with percent policy limitation and previous events",
            none(),
            uniform(&[2, 4, 6], 120),
            1,
            1000,
            None,
            down_g(0, 0, 50, 120, 300),
            100,
            0,
            56,
        ),
        (
            "scaleDown with percent policy and previous scale up and down events",
            uniform(&[2], 120),
            uniform(&[4], 120),
            1,
            1000,
            None,
            down_g(0, 0, 50, 180, 0),
            10,
            1,
            6,
        ),
        (
            "scaleDown with previous events preventing further scale down",
            none(),
            uniform(&[10, 10, 10], 120),
            1,
            1000,
            None,
            down_g(0, 0, 10, 120, 300),
            100,
            0,
            100,
        ),
        (
            "scaleDown with with previous events still allowing more scale down",
            none(),
            uniform(&[10, 10, 10], 120),
            1,
            1000,
            None,
            down_g(0, 0, 1000, 120, 300),
            10,
            5,
            5,
        ),
        (
            "check 'outdated' flag for events for one behavior for up",
            uniform(&[8, 12, 9, 11], 120),
            none(),
            1,
            1000,
            up_g(1000, 60, 0, 0, 0),
            None,
            100,
            200,
            200,
        ),
        (
            "check that events were not marked 'outdated' for two different policies in the behavior for up",
            uniform(&[8, 12, 9, 11], 120),
            none(),
            1,
            1000,
            up_g(1000, 120, 100, 60, 0),
            None,
            100,
            200,
            200,
        ),
        (
            "check that events were marked 'outdated' for two different policies in the behavior for up",
            uniform(&[8, 12, 9, 11], 120),
            none(),
            1,
            1000,
            up_g(1000, 30, 100, 60, 0),
            None,
            100,
            200,
            200,
        ),
        (
            "check 'outdated' flag for events for one behavior for down",
            none(),
            uniform(&[8, 12, 9, 11], 120),
            1,
            1000,
            None,
            down_g(1000, 60, 0, 0, 300),
            100,
            5,
            5,
        ),
        (
            "check that events were not marked 'outdated' for two different policies in the behavior for down",
            none(),
            uniform(&[8, 12, 9, 11], 120),
            1,
            1000,
            None,
            down_g(1000, 120, 100, 60, 300),
            100,
            5,
            5,
        ),
        (
            "check that events were marked 'outdated' for two different policies in the behavior for down",
            none(),
            uniform(&[8, 12, 9, 11], 120),
            1,
            1000,
            None,
            down_g(1000, 30, 100, 60, 300),
            100,
            5,
            5,
        ),
    ];
    assert_eq!(cases.len(), 40, "every case of TestScalingWithRules");
    for (name, up_events, down_events, min, max, up, down, current, desired, expected) in cases {
        let spec = spec_with(min, max, up, down);
        let c = Controller {
            up_events,
            down_events,
            ..Controller::default()
        };
        assert_eq!(c.limit(&spec, NOW, current, desired), expected, "{name}");
    }
}

/// TestStoreScaleEvents: the replica change in the last 60 s before the
/// store, then the record after a scale-up of 10 → 10 + change (and the
/// same for a scale-down): slot reuse and the `outdated` flags.
#[test]
fn store_scale_events() {
    type Case = (
        &'static str,
        &'static [(i32, f64, bool)],
        Option<Rules>,
        i32,
        &'static [(i32, bool)],
    );
    let cases: Vec<Case> = vec![
        ("empty entries with default behavior", &[], None, 0, &[]),
        (
            "empty entries with two-policy-behavior",
            &[],
            up_g(10, 60, 100, 60, 0),
            0,
            &[(5, false)],
        ),
        (
            "one outdated entry to be kept untouched without behavior",
            &[(7, 61.0, false)],
            None,
            0,
            &[(7, false)],
        ),
        (
            "one outdated entry to be replaced with behavior",
            &[(7, 61.0, false)],
            up_g(10, 60, 100, 60, 0),
            0,
            &[(5, false)],
        ),
        (
            "one actual entry to be not touched with behavior",
            &[(7, 58.0, false)],
            up_g(10, 60, 100, 60, 0),
            7,
            &[(7, false), (5, false)],
        ),
        (
            "two entries, one of them to be replaced",
            &[(7, 61.0, false), (6, 59.0, false)],
            up_g(10, 60, 0, 0, 0),
            6,
            &[(5, false), (6, false)],
        ),
        (
            "replace one entry, use policies with different periods",
            &[
                (8, 29.0, false),
                (6, 59.0, false),
                (7, 61.0, false),
                (9, 61.0, false),
            ],
            up_g(10, 60, 100, 30, 0),
            14,
            &[(8, false), (6, false), (7, true), (5, false)],
        ),
        (
            "two entries, both actual",
            &[(7, 58.0, false), (6, 59.0, false)],
            up_g(10, 120, 100, 30, 0),
            13,
            &[(7, false), (6, false), (5, false)],
        ),
    ];
    for (name, previous, rules, change_before, after) in cases {
        for up in [true, false] {
            let mut spec = spec_with(1, 1000, None, None);
            spec.has_behavior = rules.is_some();
            if let Some(rules) = &rules {
                if up {
                    spec.up = rules.clone();
                } else {
                    spec.down = rules.clone();
                }
            }
            let mut c = Controller::default();
            let record = if up {
                &mut c.up_events
            } else {
                &mut c.down_events
            };
            *record = events(previous);
            assert_eq!(record.changed_in(NOW, 60), change_before, "{name}");
            let to = if up { 15 } else { 5 };
            c.store_scale_event(&spec, NOW, 10, to);
            let record = if up { &c.up_events } else { &c.down_events };
            let got: Vec<(i32, bool)> = record.0.iter().map(|e| (e.change, e.outdated)).collect();
            assert_eq!(got, after, "{name} (up: {up})");
        }
    }
}

/// TestScaleUpOneMetricInvalid, TestNoScaleDownOneMetricInvalid and
/// TestScaleUpOneMetricEmpty (computeReplicasForMetrics): with one metric
/// unreadable, a scale-up on the others goes ahead; a scale-down does not.
/// The readable metric's proposals (CPU there) are given directly.
#[test]
fn one_metric_invalid() {
    let spec = spec_with(2, 6, None, None);
    // 3 replicas, CPU proposes 4, the second metric unreadable: 4.
    let mut c = Controller::default();
    assert_eq!(
        c.sync_proposals(&spec, NOW, Replicas::settled(3), &[Some(4), None]),
        4
    );
    // 5 replicas, CPU proposes 3: no scale-down on partial data.
    let mut c = Controller::default();
    assert_eq!(
        c.sync_proposals(&spec, NOW, Replicas::settled(5), &[Some(3), None]),
        5
    );
    // Every metric unreadable: no change either way.
    assert_eq!(combine(&[None, None], 5), None);
    // All readable: the largest wins, up or down.
    assert_eq!(combine(&[Some(3), Some(2)], 5), Some(3));
    assert_eq!(combine(&[Some(3), Some(7)], 5), Some(7));
}
