//! `scalectl tune`: which HPA settings meet a goal for a given load, at the
//! fewest pod-seconds?
//!
//! The search runs `plan`'s simulation over a grid of settings: the
//! `averageValue` target, `maxReplicas`, and the scale-up and scale-down
//! rules (policies and stabilization window). A setting meets the goals
//! only if it does so at every clock phase of the grid (`plan::phase_grid`),
//! since on a cluster the phase is luck. Among those, the fewest pod-seconds
//! above `minReplicas` (the mean over the phases) wins: what the scaling
//! costs beyond the floor.
//!
//! The search is staged to stay within seconds:
//! 1. for each target and scale-up rule, the smallest `maxReplicas` that
//!    meets the goals, with the HPA's own scale-down rule (a bisection,
//!    which assumes more replicas never make a goal harder to meet; where
//!    that fails it costs only a cheaper answer missed, since every result
//!    is checked);
//! 2. for the cheapest of those, every scale-down rule;
//! 3. the cheapest again, re-simulated on a finer phase grid; one that
//!    fails there is dropped.
//!
//! The HPA's own settings are always checked on the final grid (within the
//! `maxReplicas` limit), so the first result never costs more than what
//! the file has, when that meets the goals.

use std::str::FromStr;

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    MetricTarget,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::hpa::{Policy, Rules, Select, Spec, Target};
use crate::plan::{Scenario, phase_grid, plan};
use crate::quantity::{Milli, format_f64, format_milli};

/// The sync period in the API's whole seconds, for policies.
const SYNC_PERIOD_SECONDS: i32 = 15;

/// The bridge's histogram of the wait a `wait=` goal bounds: from a job's
/// publish to its first push to a worker. What production watches for the
/// goal tuned for (manifests/base/monitoring.yaml records its quantiles).
pub const WAIT_METRIC: &str = "host_bridge_job_queue_wait_seconds";

/// What the load must see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Every job done within this many seconds of the burst (`drain=120s`).
    Drain(f64),
    /// Every job taken by a pod within this many seconds of arriving
    /// (`wait=60s`).
    Wait(f64),
}

impl FromStr for Goal {
    type Err = String;

    /// `drain=<duration>` or `wait=<duration>`, durations as humantime
    /// reads them (`90s`, `2m`).
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: want drain=<duration> or wait=<duration>"))?;
        let seconds = humantime::parse_duration(value.trim())
            .map_err(|e| format!("{text:?}: {e}"))?
            .as_secs_f64();
        match kind.trim() {
            "drain" => Ok(Goal::Drain(seconds)),
            "wait" => Ok(Goal::Wait(seconds)),
            other => Err(format!("{other:?}: the goals are drain and wait")),
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::Drain(s) => write!(f, "every job done within {s} s of the burst"),
            Goal::Wait(s) => write!(f, "every job started within {s} s of arriving"),
        }
    }
}

/// How one setting did over the phase grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The slowest drain; `None` if some run did not drain.
    pub worst_drain: Option<f64>,
    /// The longest wait of any job in any run; `None` if some job was never taken.
    pub worst_wait: Option<f64>,
    /// Pod-seconds above `minReplicas`, the mean over the runs.
    pub extra_pod_seconds: f64,
    /// The most replicas any run reached.
    pub peak_replicas: i32,
    /// Runs simulated.
    pub runs: usize,
}

impl Outcome {
    /// Whether every goal holds in every run.
    pub fn meets(&self, goals: &[Goal]) -> bool {
        goals.iter().all(|goal| match *goal {
            Goal::Drain(limit) => self.worst_drain.is_some_and(|d| d <= limit),
            Goal::Wait(limit) => self.worst_wait.is_some_and(|w| w <= limit),
        })
    }
}

/// Simulates `spec` under `scenario` at every phase of a `steps`-per-clock
/// grid.
pub fn evaluate(spec: &Spec, scenario: &Scenario, steps: usize) -> Outcome {
    let grid = phase_grid(scenario, steps);
    let mut outcome = Outcome {
        worst_drain: Some(0.0),
        worst_wait: Some(0.0),
        extra_pod_seconds: 0.0,
        peak_replicas: 0,
        runs: grid.len(),
    };
    for phases in grid {
        let run = plan(
            spec,
            &Scenario {
                phases,
                ..scenario.clone()
            },
        );
        let worse = |a: Option<f64>, b: Option<f64>| Some(a?.max(b?));
        outcome.worst_drain = worse(outcome.worst_drain, run.drain_time);
        outcome.worst_wait = worse(outcome.worst_wait, run.max_wait);
        outcome.extra_pod_seconds += run.extra_pod_seconds;
        outcome.peak_replicas = outcome.peak_replicas.max(run.peak_replicas);
    }
    outcome.extra_pod_seconds /= outcome.runs as f64;
    outcome
}

/// The bounds and cost of a search.
#[derive(Debug, Clone)]
pub struct Search {
    /// The largest `maxReplicas` to consider (what the cluster can hold).
    pub max_replicas_limit: i32,
    /// Phases per clock while searching (`steps`³ runs per setting).
    pub search_steps: usize,
    /// Phases per clock for the final check of each result.
    pub verify_steps: usize,
    /// Results to return, cheapest first.
    pub results: usize,
}

impl Default for Search {
    fn default() -> Self {
        Self {
            max_replicas_limit: 100,
            search_steps: 2,
            verify_steps: 5,
            results: 5,
        }
    }
}

/// One setting that meets the goals.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The HPA as simulated.
    pub spec: Spec,
    /// Its figures on the verification grid.
    pub outcome: Outcome,
}

/// Why no setting was returned.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Asked for nothing.
    #[error("give at least one goal (--goal drain=120s, --goal wait=60s)")]
    NoGoal,
    /// The scenario can't be simulated (`Scenario::validate`).
    #[error("{0}")]
    Scenario(String),
    /// Nothing in the search space meets the goals.
    #[error(
        "no setting up to maxReplicas {limit} meets the goals; the closest found: {closest}. \
         Relax the goal, raise --max-replicas-limit, or raise minReplicas (the first scale-up \
         waits for the metric pipeline)"
    )]
    Unreachable {
        /// The search's `maxReplicas` bound.
        limit: i32,
        /// The best worst-case drain and wait found, and the physical bound.
        closest: String,
    },
}

/// The `averageValue` targets searched.
const TARGETS: &[Milli] = &[
    Milli::from_units(1),
    Milli::from_units(2),
    Milli::from_units(3),
    Milli::from_units(4),
    Milli::from_units(5),
    Milli::from_units(6),
    Milli::from_units(8),
    Milli::from_units(10),
    Milli::from_units(15),
    Milli::from_units(20),
];
/// The `maxReplicas` values searched (up to the limit, which is added).
const MAXES: &[i32] = &[
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200,
];

/// The scale-up rules searched: no window, the larger of a Percent and a
/// Pods step per sync period (the API default is 100 % and 4 pods).
fn up_rules() -> Vec<Rules> {
    [
        (100, 4),
        (100, 10),
        (200, 4),
        (200, 10),
        (400, 20),
        (900, 50),
    ]
    .into_iter()
    .map(|(percent, pods)| Rules {
        stabilization: 0,
        policies: vec![
            Policy::Percent {
                value: percent,
                period: SYNC_PERIOD_SECONDS,
            },
            Policy::Pods {
                value: pods,
                period: SYNC_PERIOD_SECONDS,
            },
        ],
        select: Select::Max,
        tolerance: None,
    })
    .collect()
}

/// The scale-down rules searched: a stabilization window with either half
/// the pods a minute or all of them per sync period.
fn down_rules() -> Vec<Rules> {
    let mut all = vec![];
    for window in [0, 30, 60, 120, 300] {
        for policy in [
            Policy::Percent {
                value: 50,
                period: 60,
            },
            Policy::Percent {
                value: 100,
                period: SYNC_PERIOD_SECONDS,
            },
        ] {
            all.push(Rules {
                stabilization: window,
                policies: vec![policy],
                select: Select::Max,
                tolerance: None,
            });
        }
    }
    all
}

/// Searches for settings that meet `goals` under `scenario`, cheapest
/// first. `base` supplies what the search keeps (minReplicas, tolerances)
/// and is itself a candidate.
pub fn tune(
    base: &Spec,
    scenario: &Scenario,
    goals: &[Goal],
    search: &Search,
) -> Result<Vec<Candidate>, TuneError> {
    if goals.is_empty() {
        return Err(TuneError::NoGoal);
    }
    scenario.validate().map_err(TuneError::Scenario)?;
    let searcher = Searcher::new(base, scenario, goals, search);
    let found = searcher.smallest_maxes()?;
    let refined = searcher.every_scale_down(&found);
    searcher.verified(refined)
}

/// One search's fixed inputs, and its stages.
struct Searcher<'a> {
    base: &'a Spec,
    scenario: &'a Scenario,
    goals: &'a [Goal],
    search: &'a Search,
    /// The largest maxReplicas considered.
    limit: i32,
    /// The maxReplicas values considered, ascending, `limit` last.
    maxes: Vec<i32>,
}

impl<'a> Searcher<'a> {
    fn new(base: &'a Spec, scenario: &'a Scenario, goals: &'a [Goal], search: &'a Search) -> Self {
        let limit = search.max_replicas_limit.max(base.min).max(1);
        let mut maxes: Vec<i32> = MAXES
            .iter()
            .copied()
            .filter(|m| (base.min.max(1)..=limit).contains(m))
            .chain([limit])
            .collect();
        maxes.dedup();
        Self {
            base,
            scenario,
            goals,
            search,
            limit,
            maxes,
        }
    }

    /// A candidate: the base's minReplicas and tolerances, the rest given.
    fn at(&self, target: Milli, max: i32, up: &Rules, down: &Rules) -> Spec {
        Spec {
            min: self.base.min,
            max,
            target: Target::AverageValue(target),
            up: Rules {
                tolerance: self.base.up.tolerance,
                ..up.clone()
            },
            down: Rules {
                tolerance: self.base.down.tolerance,
                ..down.clone()
            },
            has_behavior: true,
        }
    }

    /// A setting's figures on the search's coarse grid.
    fn coarse(&self, spec: &Spec) -> Outcome {
        evaluate(spec, self.scenario, self.search.search_steps)
    }

    /// Stage 1: for each target and scale-up rule, the smallest maxReplicas
    /// that meets the goals, with the HPA's own scale-down rule; and the
    /// file's own settings, unless past the limit. Cheapest first.
    fn smallest_maxes(&self) -> Result<Vec<(Spec, Outcome)>, TuneError> {
        let mut found: Vec<(Spec, Outcome)> = vec![];
        let mut closest = Closest::default();
        let down = if self.base.has_behavior {
            self.base.down.clone()
        } else {
            Rules::default_down()
        };
        for &target in TARGETS {
            for up in up_rules() {
                let top = self.at(
                    target,
                    *self.maxes.last().unwrap_or(&self.limit),
                    &up,
                    &down,
                );
                let outcome = self.coarse(&top);
                closest.note(&outcome);
                if outcome.meets(self.goals) {
                    found.push(self.bisect(target, &up, &down, (top, outcome)));
                }
            }
        }
        let own = self.coarse(self.base);
        if self.base.max <= self.limit && own.meets(self.goals) {
            found.push((self.base.clone(), own));
        }
        if found.is_empty() {
            return Err(closest.unreachable(self.limit, self.scenario));
        }
        by_cost(&mut found);
        Ok(found)
    }

    /// The smallest max that still meets the goals, given that the
    /// largest (`top`) does.
    fn bisect(
        &self,
        target: Milli,
        up: &Rules,
        down: &Rules,
        top: (Spec, Outcome),
    ) -> (Spec, Outcome) {
        let (mut lo, mut hi) = (0, self.maxes.len() - 1);
        let mut best = top;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let spec = self.at(target, self.maxes[mid], up, down);
            let outcome = self.coarse(&spec);
            if outcome.meets(self.goals) {
                best = (spec, outcome);
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        best
    }

    /// Stage 2: every scale-down rule for the cheapest few. Cheapest first.
    fn every_scale_down(&self, found: &[(Spec, Outcome)]) -> Vec<(Spec, Outcome)> {
        let mut refined = found.to_vec();
        for (spec, _) in found.iter().take(self.search.results.max(1)) {
            if !spec.has_behavior {
                continue;
            }
            for down in down_rules() {
                let candidate = Spec {
                    down: Rules {
                        tolerance: spec.down.tolerance,
                        ..down
                    },
                    ..spec.clone()
                };
                let outcome = self.coarse(&candidate);
                if outcome.meets(self.goals) {
                    refined.push((candidate, outcome));
                }
            }
        }
        by_cost(&mut refined);
        refined
    }

    /// Stage 3: the cheapest re-simulated on the finer grid, and the
    /// file's own settings on the same grid whatever the coarse ranking
    /// said (so that #1 never costs more than they do). The coarse grid's
    /// worst case can be kinder than the fine one's, so if none holds
    /// there, the error reports the fine figures.
    fn verified(&self, refined: Vec<(Spec, Outcome)>) -> Result<Vec<Candidate>, TuneError> {
        let wanted = self.search.results.max(1);
        let mut closest = Closest::default();
        let mut results: Vec<Candidate> = vec![];
        // At most four candidates checked per result asked for: on a fine
        // grid (--phase-steps 20 is 8,000 runs each) checking every one
        // would take minutes when the coarse grid was too kind to many.
        for (spec, _) in refined.into_iter().take(wanted * 4) {
            if results.len() >= wanted {
                break;
            }
            if results.iter().any(|c| c.spec == spec) {
                continue;
            }
            let outcome = evaluate(&spec, self.scenario, self.search.verify_steps);
            closest.note(&outcome);
            if outcome.meets(self.goals) {
                results.push(Candidate { spec, outcome });
            }
        }
        let base = self.base;
        if base.max <= self.limit && !results.iter().any(|c| c.spec == *base) {
            let outcome = evaluate(base, self.scenario, self.search.verify_steps);
            if outcome.meets(self.goals) {
                results.push(Candidate {
                    spec: base.clone(),
                    outcome,
                });
            }
        }
        if results.is_empty() {
            return Err(closest.unreachable(self.limit, self.scenario));
        }
        results.sort_by(|a, b| {
            a.outcome
                .extra_pod_seconds
                .total_cmp(&b.outcome.extra_pod_seconds)
        });
        results.truncate(wanted);
        Ok(results)
    }
}

/// The best worst-case figures seen, for the error when nothing meets the goals.
#[derive(Default)]
struct Closest {
    drain: Option<f64>,
    wait: Option<f64>,
}

impl Closest {
    fn note(&mut self, outcome: &Outcome) {
        let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.drain = best(self.drain, outcome.worst_drain);
        self.wait = best(self.wait, outcome.worst_wait);
    }

    fn unreachable(&self, limit: i32, scenario: &Scenario) -> TuneError {
        let show = |v: Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.0} s"));
        let mut closest = format!(
            "worst drain {}, worst wait {}",
            show(self.drain),
            show(self.wait)
        );
        if scenario.burst > 0 {
            let per_round = f64::from(limit as u32 * scenario.concurrency.max(1));
            let bound = (f64::from(scenario.burst) / per_round).ceil() * scenario.service_time;
            closest +=
                &format!(" (no HPA drains the burst with {limit} workers in under {bound:.0} s)");
        }
        TuneError::Unreachable { limit, closest }
    }
}

/// Cheapest first; ties to the fewer replicas, then the higher target.
fn by_cost(list: &mut [(Spec, Outcome)]) {
    list.sort_by(|(sa, a), (sb, b)| {
        a.extra_pod_seconds
            .total_cmp(&b.extra_pod_seconds)
            .then(sa.max.cmp(&sb.max))
            .then(sb.target.value().cmp(&sa.target.value()))
    });
}

/// Writes `spec`'s target, maxReplicas and behavior into `hpa` (its first
/// External metric), keeping everything else.
pub fn apply(spec: &Spec, hpa: &mut HorizontalPodAutoscaler) -> anyhow::Result<()> {
    let hpa_spec = hpa
        .spec
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("the HPA has no spec"))?;
    hpa_spec.max_replicas = spec.max;
    let external = hpa_spec
        .metrics
        .iter_mut()
        .flatten()
        .find_map(|m| m.external.as_mut())
        .ok_or_else(|| anyhow::anyhow!("the HPA has no External metric"))?;
    let (type_, value) = match spec.target {
        Target::AverageValue(v) => ("AverageValue", v),
        Target::Value(v) => ("Value", v),
    };
    let quantity = Some(Quantity(format_milli(value)));
    external.target = MetricTarget {
        type_: type_.to_owned(),
        average_value: if type_ == "AverageValue" {
            quantity.clone()
        } else {
            None
        },
        value: if type_ == "Value" { quantity } else { None },
        average_utilization: None,
    };
    hpa_spec.behavior = spec.has_behavior.then(|| HorizontalPodAutoscalerBehavior {
        scale_up: Some(api_rules(&spec.up)),
        scale_down: Some(api_rules(&spec.down)),
    });
    Ok(())
}

fn api_rules(rules: &Rules) -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(rules.stabilization),
        select_policy: Some(
            match rules.select {
                Select::Max => "Max",
                Select::Min => "Min",
                Select::Disabled => "Disabled",
            }
            .to_owned(),
        ),
        policies: Some(
            rules
                .policies
                .iter()
                .map(|p| match *p {
                    Policy::Pods { value, period } => HPAScalingPolicy {
                        type_: "Pods".into(),
                        value,
                        period_seconds: period,
                    },
                    Policy::Percent { value, period } => HPAScalingPolicy {
                        type_: "Percent".into(),
                        value,
                        period_seconds: period,
                    },
                })
                .collect(),
        ),
        // A tolerance of 0.0125 is written 12500u, not rounded to 13m.
        tolerance: rules.tolerance.map(|t| Quantity(format_f64(t))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_parse() {
        assert_eq!("drain=2m".parse::<Goal>(), Ok(Goal::Drain(120.0)));
        assert_eq!("wait=45s".parse::<Goal>(), Ok(Goal::Wait(45.0)));
        for bad in ["drain", "drain=fast", "latency=5s", "=5s"] {
            assert!(bad.parse::<Goal>().is_err(), "{bad:?}");
        }
    }
}
