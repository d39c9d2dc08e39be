//! `scalectl plan`: simulates an HPA scaling workers on queue length, for
//! capacity planning before a deploy.
//!
//! The world is simulated in steps of 0.1 s, every time in it integer
//! milliseconds (as the controller's clock): jobs arrive (a burst and/or a
//! steady rate), ready pods take jobs up to their concurrency and finish each
//! after the service time, new pods become ready after the start delay, and
//! removed pods finish the job in hand first (as host-bridge drains). The
//! metric reaches the controller through the real pipeline's lag: RabbitMQ
//! refreshes queue stats every `stats_interval`, Prometheus scrapes every
//! `scrape_interval`, and the controller (`hpa`) syncs every 15 s.
//!
//! On a real cluster those three clocks are independent, and their phase
//! against each other and the burst moves the drain by tens of seconds.
//! One plan fixes the phases (`Scenario::phases`); `over_phases` sweeps them
//! and reports the best, median and worst drain.

use std::collections::VecDeque;

use crate::cluster::Cluster;
use crate::hpa::{Controller, Replicas, SYNC_PERIOD, Spec};
use crate::quantity::Milli;

const STEP: f64 = 0.1;
/// The step in the controller's milliseconds: the controller's clock is
/// `step × 100` exactly, never `step × 0.1` (174 × 0.1 is
/// 17.400000000000002, which keeps an event exactly 15 s old in a window).
const STEP_MS: i64 = 100;

/// The load and the workers.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Jobs queued at once at `burst_at`.
    pub burst: u32,
    /// When the burst arrives, seconds. The default, 1 s, is just after a
    /// sync, a scrape and a stats refresh when every clock's phase is 0:
    /// one point of the spread `over_phases` measures, not its worst.
    pub burst_at: f64,
    /// Jobs per second arriving steadily.
    pub rate: f64,
    /// For how long the steady rate lasts, seconds.
    pub rate_duration: f64,
    /// Seconds of work per job.
    pub service_time: f64,
    /// Jobs one pod works on at once (the bridge's CONCURRENCY).
    pub concurrency: u32,
    /// Seconds from a scale-up to the new pod taking work.
    pub pod_start: f64,
    /// RabbitMQ's `collect_statistics_interval`, seconds.
    pub stats_interval: f64,
    /// Prometheus's scrape interval, seconds.
    pub scrape_interval: f64,
    /// Replicas at t = 0 (raised to the HPA's minReplicas).
    pub initial_replicas: i32,
    /// Give up after this many seconds.
    pub horizon: f64,
    /// When each clock first ticks.
    pub phases: Phases,
    /// The Kubernetes release and gates the controller runs with.
    pub cluster: Cluster,
    /// Jobs arriving at given times, as (seconds, count) in time order,
    /// besides the burst and the steady rate: the arrivals a live run saw,
    /// which `watch` replays to set the plan beside the cluster.
    pub arrivals: Vec<(f64, u32)>,
}

/// When each of the pipeline's clocks first ticks, seconds (each within its
/// period; rounded to the simulation's 0.1 s step).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    /// RabbitMQ's stats refresh.
    pub stats: f64,
    /// Prometheus's scrape.
    pub scrape: f64,
    /// The controller's sync.
    pub sync: f64,
}

impl std::fmt::Display for Phases {
    /// As `--phase` takes it: `stats,scrape,sync`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.stats, self.scrape, self.sync)
    }
}

impl std::str::FromStr for Phases {
    type Err = String;

    /// `stats,scrape,sync` in seconds, e.g. `2.5,7,13`.
    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<f64> = text
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                format!("not three numbers: {text:?} (stats,scrape,sync, e.g. 2.5,7,13)")
            })?;
        match parts[..] {
            [stats, scrape, sync] if parts.iter().all(|p| p.is_finite() && *p >= 0.0) => Ok(Self {
                stats,
                scrape,
                sync,
            }),
            _ => Err(format!(
                "want three phases, each zero or more: {text:?} (stats,scrape,sync)"
            )),
        }
    }
}

impl Scenario {
    /// Refuses a scenario the simulation can't answer: clocks that never
    /// tick, or load that arrives after the horizon.
    pub fn validate(&self) -> Result<(), String> {
        for (name, interval) in [
            ("the stats interval", self.stats_interval),
            ("the scrape interval", self.scrape_interval),
        ] {
            if !(interval.is_finite() && interval >= STEP) {
                return Err(format!(
                    "{name} must be at least {STEP} s (the simulation's step), not {interval}"
                ));
            }
        }
        if self.concurrency == 0 {
            return Err("a pod must take at least one job at once".into());
        }
        let observed: u64 = self.arrivals.iter().map(|a| u64::from(a.1)).sum();
        if observed + u64::from(self.burst) > u64::from(u32::MAX / 2) {
            return Err(format!(
                "{observed} observed jobs are more than a plan can count"
            ));
        }
        if self.arrivals.windows(2).any(|w| w[1].0 < w[0].0)
            || self
                .arrivals
                .iter()
                .any(|a| !(a.0.is_finite() && a.0 >= 0.0))
        {
            return Err("observed arrivals must be at times from 0 on, in order".into());
        }
        let last_arrival = self
            .burst_at
            .max(if self.rate > 0.0 {
                self.rate_duration
            } else {
                0.0
            })
            .max(self.arrivals.last().map_or(0.0, |a| a.0));
        if last_arrival >= self.horizon {
            return Err(format!(
                "the load arrives until {last_arrival} s, past the simulation's horizon of {} s",
                self.horizon
            ));
        }
        Ok(())
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            burst: 300,
            burst_at: 1.0,
            rate: 0.0,
            rate_duration: 0.0,
            service_time: 5.0,
            concurrency: 1,
            pod_start: 5.0,
            stats_interval: 5.0,
            scrape_interval: 15.0,
            initial_replicas: 1,
            horizon: 3600.0,
            phases: Phases::default(),
            cluster: Cluster::default(),
            arrivals: Vec::new(),
        }
    }
}

/// The state at one controller sync.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Seconds since t = 0.
    pub t: f64,
    /// Ready messages.
    pub ready: u32,
    /// Messages being worked on.
    pub unacked: u32,
    /// What the controller saw (ready + unacked, lagged).
    pub metric: f64,
    /// Replicas after this sync.
    pub replicas: i32,
    /// Pods taking work.
    pub ready_pods: u32,
}

/// The outcome of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One row per sync.
    pub ticks: Vec<Tick>,
    /// One row per second, for charts.
    pub timeline: Vec<Tick>,
    /// The most replicas at any time.
    pub peak_replicas: i32,
    /// Seconds from the burst to the first scale-up, if any.
    pub first_scale_up: Option<f64>,
    /// Seconds from the burst to the last job done, if within the horizon.
    pub drain_time: Option<f64>,
    /// `ceil(burst / maxReplicas / concurrency) × service time`: no HPA can drain the burst faster.
    pub lower_bound: f64,
    /// The longest any job waited in the queue before a pod took it,
    /// seconds; `None` if some job was never taken within the horizon.
    pub max_wait: Option<f64>,
    /// Pod-seconds above `minReplicas`, from t = 0 until the plan ends
    /// (back at min): what the scaling cost beyond the floor. Pods that are
    /// starting, or finishing a job after a scale-down, count.
    pub extra_pod_seconds: f64,
    /// When the burst arrived (the drain and the bound count from here).
    pub burst_at: f64,
    /// Every job a pod took, as (when, seconds it had waited), in order:
    /// the waits whose quantiles `watch` sets beside the live histogram's.
    pub waits: Vec<(f64, f64)>,
}

/// Seconds as the world's integer milliseconds: every time in the world is
/// exact, so an event at `t` has happened by `t` without a slack.
fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// Milliseconds as seconds, for the results.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

struct Pod {
    /// Milliseconds, as every time below.
    ready_at: i64,
    /// When each job in hand finishes.
    busy: Vec<i64>,
    leaving: bool,
}

/// Runs the scenario against the HPA spec.
pub fn plan(spec: &Spec, scenario: &Scenario) -> Plan {
    let mut controller = Controller::new(scenario.cluster.tolerance_rule());
    let mut world = World::new(scenario, spec.min);
    let mut ticks = Vec::new();
    let mut timeline = Vec::new();
    let (mut peak, mut first_scale_up) = (world.replicas, None);
    let steps = (scenario.horizon / STEP) as u64;
    let burst_at = ms(scenario.burst_at);
    for step in 0..=steps as i64 {
        let t = step * STEP_MS;
        world.arrive(t);
        world.finish(t);
        world.assign(t);
        world.observe(step);
        if every(step, 1.0, 0.0) {
            timeline.push(world.snapshot(t));
        }
        if every(step, SYNC_PERIOD, scenario.phases.sync) {
            let metric = Milli::from_units(i64::from(world.scraped));
            let desired = controller.sync(spec, t, metric, world.observed(t));
            if desired > world.replicas {
                first_scale_up.get_or_insert(seconds(t - burst_at.min(t)));
            }
            world.scale_to(t, desired);
            peak = peak.max(desired);
            ticks.push(world.snapshot(t));
            if world.drain_time.is_some() && desired == spec.min {
                // The timeline ends on the scale-down back to min.
                timeline.push(world.snapshot(t));
                break;
            }
        }
    }
    let per_round = f64::from(spec.max.max(1) as u32 * scenario.concurrency);
    Plan {
        ticks,
        timeline,
        peak_replicas: peak,
        first_scale_up,
        max_wait: (world.ready == 0 && !world.burst_pending).then_some(seconds(world.max_wait)),
        extra_pod_seconds: seconds(world.extra_pod_ms),
        drain_time: world.drain_time.map(seconds),
        lower_bound: (f64::from(scenario.burst) / per_round).ceil() * scenario.service_time,
        burst_at: scenario.burst_at,
        waits: world
            .waits
            .iter()
            .map(|&(t, wait)| (seconds(t), seconds(wait)))
            .collect(),
    }
}

/// Whether a clock with this period, first ticking at `phase` (seconds),
/// ticks at simulation step `t`.
fn every(t: i64, period: f64, phase: f64) -> bool {
    let phase = (phase / STEP).round() as i64;
    period > 0.0
        && t >= phase
        && ((t - phase) as u64).is_multiple_of((period / STEP).round().max(1.0) as u64)
}

/// The simulated queue, pods and metric pipeline; `plan` advances it one
/// step at a time, one method per phase of a step, in this order.
struct World<'a> {
    scenario: &'a Scenario,
    pods: Vec<Pod>,
    replicas: i32,
    /// Messages ready in the queue.
    ready: u32,
    /// When the ready messages arrived, oldest first, as (time, count).
    arrivals: VecDeque<(i64, u32)>,
    /// The longest wait so far from arrival to a pod taking the job.
    max_wait: i64,
    /// (when taken, wait) of every job taken so far.
    waits: Vec<(i64, i64)>,
    /// The next of the scenario's observed arrivals to come.
    next_observed: usize,
    /// ∫ (pods − minReplicas) dt so far, pod-milliseconds.
    extra_pod_ms: i64,
    min_replicas: i32,
    burst_pending: bool,
    /// Steady-rate jobs that have arrived so far.
    rate_arrived: u32,
    /// Every job the scenario brings (burst and rate).
    total: u32,
    done: u32,
    /// The broker's last stats refresh of ready + unacked.
    stats: u32,
    /// What the last scrape read from the broker's stats.
    scraped: u32,
    drain_time: Option<i64>,
    /// The scenario's times in milliseconds.
    burst_at: i64,
    service_time: i64,
    pod_start: i64,
}

impl<'a> World<'a> {
    fn new(scenario: &'a Scenario, min_replicas: i32) -> Self {
        // The fleet idles at minReplicas when the load comes: fewer would
        // be raised at the first sync anyway.
        let initial = scenario.initial_replicas.max(min_replicas);
        let pods = (0..initial)
            .map(|_| Pod {
                ready_at: 0,
                busy: vec![],
                leaving: false,
            })
            .collect();
        Self {
            scenario,
            pods,
            replicas: initial,
            ready: 0,
            arrivals: VecDeque::new(),
            max_wait: 0,
            waits: Vec::new(),
            next_observed: 0,
            extra_pod_ms: 0,
            min_replicas,
            burst_pending: true,
            rate_arrived: 0,
            total: scenario.burst
                + steady(scenario, ms(scenario.rate_duration))
                + scenario.arrivals.iter().map(|a| a.1).sum::<u32>(),
            done: 0,
            stats: 0,
            scraped: 0,
            drain_time: None,
            burst_at: ms(scenario.burst_at),
            service_time: ms(scenario.service_time),
            pod_start: ms(scenario.pod_start),
        }
    }

    /// The burst (once) and the steady rate's jobs due by `t`.
    fn arrive(&mut self, t: i64) {
        if self.burst_pending && t >= self.burst_at {
            self.burst_pending = false;
            self.enqueue(self.burst_at, self.scenario.burst);
        }
        let due = steady(self.scenario, t);
        self.enqueue(t, due - self.rate_arrived);
        self.rate_arrived = due;
        while let Some(&(at, count)) = self.scenario.arrivals.get(self.next_observed)
            && ms(at) <= t
        {
            self.enqueue(ms(at), count);
            self.next_observed += 1;
        }
        // This step's pods, for the cost (leaving ones still run).
        self.extra_pod_ms +=
            (self.pods.len() as i64 - i64::from(self.min_replicas)).max(0) * STEP_MS;
    }

    fn enqueue(&mut self, at: i64, count: u32) {
        if count > 0 {
            self.ready += count;
            self.arrivals.push_back((at, count));
        }
    }

    /// A pod takes the oldest ready job at `t`.
    fn dequeue(&mut self, t: i64) {
        if let Some((at, count)) = self.arrivals.front_mut() {
            self.max_wait = self.max_wait.max(t - *at);
            self.waits.push((t, t - *at));
            *count -= 1;
            if *count == 0 {
                self.arrivals.pop_front();
            }
        }
        self.ready -= 1;
    }

    /// Finished jobs leave; pods that were removed go once idle.
    fn finish(&mut self, t: i64) {
        for pod in &mut self.pods {
            let before = pod.busy.len();
            pod.busy.retain(|end| *end > t);
            self.done += (before - pod.busy.len()) as u32;
        }
        self.pods.retain(|p| !(p.leaving && p.busy.is_empty()));
    }

    /// Ready pods take work up to their concurrency; the first time nothing
    /// is left anywhere, the drain time is recorded.
    fn assign(&mut self, t: i64) {
        for i in 0..self.pods.len() {
            let pod = &self.pods[i];
            if pod.leaving || pod.ready_at > t {
                continue;
            }
            while self.ready > 0 && (self.pods[i].busy.len() as u32) < self.scenario.concurrency {
                self.dequeue(t);
                self.pods[i].busy.push(t + self.service_time);
            }
        }
        let drained = !self.burst_pending
            && self.done >= self.total
            && self.ready == 0
            && in_hand(&self.pods) == 0;
        if drained && self.drain_time.is_none() {
            self.drain_time = Some(t - self.burst_at.min(t));
        }
    }

    /// The metric pipeline at simulation step `step`: broker stats, then
    /// the scrape.
    fn observe(&mut self, step: i64) {
        if every(
            step,
            self.scenario.stats_interval,
            self.scenario.phases.stats,
        ) {
            self.stats = self.ready + in_hand(&self.pods);
        }
        if every(
            step,
            self.scenario.scrape_interval,
            self.scenario.phases.scrape,
        ) {
            self.scraped = self.stats;
        }
    }

    /// The controller's decision: new pods start, removed pods drain.
    fn scale_to(&mut self, t: i64, desired: i32) {
        if desired > self.replicas {
            for _ in self.replicas..desired {
                self.pods.push(Pod {
                    ready_at: t + self.pod_start,
                    busy: vec![],
                    leaving: false,
                });
            }
        } else if desired < self.replicas {
            remove(&mut self.pods, (self.replicas - desired) as usize);
        }
        self.replicas = desired;
    }

    /// What the controller reads at `t` besides the metric. Pods being
    /// removed are terminating: not in the Deployment's `status.replicas`,
    /// and not Ready (the bridge fails readiness as it drains).
    fn observed(&self, t: i64) -> Replicas {
        let staying = self.pods.iter().filter(|p| !p.leaving);
        Replicas {
            spec: self.replicas,
            status: staying.clone().count() as i32,
            ready: staying.filter(|p| p.ready_at <= t).count() as i32,
        }
    }

    /// The state at `t`, as a table row.
    fn snapshot(&self, t: i64) -> Tick {
        let ready_pods = self
            .pods
            .iter()
            .filter(|p| !p.leaving && p.ready_at <= t)
            .count() as u32;
        Tick {
            t: seconds(t),
            ready: self.ready,
            unacked: in_hand(&self.pods),
            metric: f64::from(self.scraped),
            replicas: self.replicas,
            ready_pods,
        }
    }
}

/// Steady-rate jobs arrived by `t` (the rate stops after its duration).
fn steady(scenario: &Scenario, t: i64) -> u32 {
    // A float rate times exact seconds; the slack keeps a job due at
    // exactly `t` (0.2/s at 5 s) from rounding to the step after.
    (scenario.rate * seconds(t).min(scenario.rate_duration) + 1e-9).floor() as u32
}

fn in_hand(pods: &[Pod]) -> u32 {
    pods.iter().map(|p| p.busy.len() as u32).sum()
}

/// Scale-down: as a ReplicaSet does, pods not yet ready go first, then the
/// idle, then the busiest last; busy pods finish their jobs before leaving.
fn remove(pods: &mut [Pod], count: usize) {
    let mut order: Vec<usize> = (0..pods.len()).filter(|&i| !pods[i].leaving).collect();
    order.sort_by(|&a, &b| {
        let key = |p: &Pod| (p.ready_at <= 0 || !p.busy.is_empty(), p.busy.len());
        key(&pods[a])
            .cmp(&key(&pods[b]))
            .then(pods[b].ready_at.cmp(&pods[a].ready_at))
    });
    for &i in order.iter().take(count) {
        pods[i].leaving = true;
    }
}

/// The drain time across clock phases.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// Phase combinations simulated.
    pub runs: usize,
    /// The fastest drain, seconds, and the phases that gave it.
    pub best: (f64, Phases),
    /// The median drain, seconds.
    pub median: f64,
    /// The slowest drain, seconds, and the phases that gave it.
    pub worst: (f64, Phases),
    /// Runs that did not drain within the horizon.
    pub undrained: usize,
}

/// Every combination of clock phases with `steps` evenly spaced phases per
/// clock within its period (`steps`³ combinations), on the simulation's
/// 0.1 s grid.
pub fn phase_grid(scenario: &Scenario, steps: usize) -> Vec<Phases> {
    let steps = steps.max(1);
    let grid = |period: f64| -> Vec<f64> {
        (0..steps)
            .map(|i| tenths((period * i as f64 / steps as f64) / STEP))
            .collect()
    };
    let mut all = Vec::with_capacity(steps.pow(3));
    for &stats in &grid(scenario.stats_interval) {
        for &scrape in &grid(scenario.scrape_interval) {
            for &sync in &grid(SYNC_PERIOD) {
                all.push(Phases {
                    stats,
                    scrape,
                    sync,
                });
            }
        }
    }
    all
}

/// A count of 0.1 s steps as seconds, without binary noise (3.3, not
/// 3.3000000000000003), so that phases print as they parse.
fn tenths(steps: f64) -> f64 {
    steps.round() / (1.0 / STEP).round()
}

/// Runs the scenario at every phase of `phase_grid` and summarizes the
/// drain time. `None` when no run drained.
pub fn over_phases(spec: &Spec, scenario: &Scenario, steps: usize) -> Option<Spread> {
    let mut drains = Vec::new();
    let mut undrained = 0;
    for phases in phase_grid(scenario, steps) {
        let run = Scenario {
            phases,
            ..scenario.clone()
        };
        match plan(spec, &run).drain_time {
            Some(drain) => drains.push((drain, phases)),
            None => undrained += 1,
        }
    }
    drains.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (best, worst) = (*drains.first()?, *drains.last()?);
    Some(Spread {
        runs: drains.len() + undrained,
        best,
        median: drains[drains.len() / 2].0,
        worst,
        undrained,
    })
}

/// The per-sync table as CSV.
pub fn csv(plan: &Plan) -> String {
    let mut out = String::from("t_seconds,ready,unacked,metric,replicas,ready_pods\n");
    for t in &plan.ticks {
        out += &format!(
            "{},{},{},{},{},{}\n",
            t.t, t.ready, t.unacked, t.metric, t.replicas, t.ready_pods
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpa::Rules;

    fn spec(max: i32) -> Spec {
        Spec {
            min: 1,
            max,
            target: crate::hpa::Target::AverageValue(Milli::from_units(5)),
            up: Rules::default_up(),
            down: Rules {
                stabilization: 120,
                ..Rules::default_down()
            },
            has_behavior: true,
        }
    }

    #[test]
    fn a_burst_scales_up_in_policy_steps_and_drains() {
        let scenario = Scenario {
            burst: 300,
            ..Scenario::default()
        };
        let plan = plan(&spec(20), &scenario);
        // The burst lands at 1 s, just after the t=0 refresh, scrape and
        // sync: the broker's stats see it at 5 s, the scrape at 15 s, the
        // sync at 15 s too. Then 1 -> 5 -> 10 -> 20, one step per sync.
        let replicas: Vec<i32> = plan.ticks.iter().take(5).map(|t| t.replicas).collect();
        assert_eq!(replicas, vec![1, 5, 10, 20, 20]);
        assert_eq!(plan.first_scale_up, Some(14.0));
        assert_eq!(plan.peak_replicas, 20);
        assert_eq!(plan.lower_bound, 75.0);
        let drain = plan.drain_time.expect("drains");
        assert!(drain >= plan.lower_bound, "{drain}");
        // Everything done, then back to one worker.
        assert_eq!(plan.ticks.last().map(|t| t.replicas), Some(1));
    }

    #[test]
    fn clock_phases_spread_the_drain_and_each_run_reproduces() {
        let scenario = Scenario::default();
        let spread = over_phases(&spec(20), &scenario, 5).expect("drains");
        assert_eq!(spread.runs, 125);
        assert_eq!(spread.undrained, 0);
        let (best, median, worst) = (spread.best.0, spread.median, spread.worst.0);
        assert!(best <= median && median <= worst, "{spread:?}");
        // The phases matter: tens of seconds between best and worst.
        assert!(worst - best >= 10.0, "{spread:?}");
        // Nothing beats the physical bound, whatever the phases.
        let plan_at = |phases| {
            plan(
                &spec(20),
                &Scenario {
                    phases,
                    ..scenario.clone()
                },
            )
        };
        assert!(best >= plan_at(spread.best.1).lower_bound);
        // `--phase` reproduces a run exactly.
        assert_eq!(plan_at(spread.worst.1).drain_time, Some(worst));
        assert_eq!(plan_at(spread.best.1).drain_time, Some(best));
        let text = spread.worst.1.to_string();
        assert_eq!(text.parse::<Phases>(), Ok(spread.worst.1));
    }

    #[test]
    fn scenarios_it_cannot_answer_are_refused() {
        assert_eq!(Scenario::default().validate(), Ok(()));
        for bad in [
            Scenario {
                stats_interval: 0.0,
                ..Scenario::default()
            },
            Scenario {
                scrape_interval: f64::NAN,
                ..Scenario::default()
            },
            Scenario {
                burst_at: 4000.0,
                ..Scenario::default()
            },
            Scenario {
                rate: 1.0,
                rate_duration: 3600.0,
                ..Scenario::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phases_parse_as_three_seconds() {
        assert_eq!(
            "2.5,7,13".parse::<Phases>(),
            Ok(Phases {
                stats: 2.5,
                scrape: 7.0,
                sync: 13.0
            })
        );
        for bad in ["", "1,2", "1,2,3,4", "a,b,c", "-1,0,0", "inf,0,0"] {
            assert!(bad.parse::<Phases>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_clock_with_a_phase_ticks_from_its_phase() {
        // Steps of 0.1 s.
        assert!(every(0, 15.0, 0.0) && every(150, 15.0, 0.0));
        assert!(!every(0, 15.0, 7.0) && every(70, 15.0, 7.0) && every(220, 15.0, 7.0));
        assert!(!every(149, 15.0, 7.0));
        assert!(every(24, 15.0, 2.4) && every(174, 15.0, 2.4) && !every(173, 15.0, 2.4));
    }

    #[test]
    fn a_value_target_multiplies_the_ready_pods() {
        // hpa.yaml's reason for AverageValue: with `Value: 5` the proposal is
        // ceil(queue / 5 × ready pods), so 20 ready pods and 50 jobs still
        // ask for 200 (clamped to max), where averageValue asks for 10.
        let average = spec(20);
        let value = Spec {
            target: crate::hpa::Target::Value(Milli::from_units(5)),
            ..spec(20)
        };
        let ready = Replicas::settled(20);
        let t = crate::hpa::Tolerances::Absolute(crate::hpa::TOLERANCE);
        let fifty = Milli::from_units(50);
        assert_eq!(crate::hpa::proposal(&average, t, fifty, ready), Some(10));
        assert_eq!(crate::hpa::proposal(&value, t, fifty, ready), Some(200));
        // So the fleet stays at max until the queue is nearly empty: the
        // same burst costs more pod-seconds.
        let (a, v) = (
            plan(&average, &Scenario::default()),
            plan(&value, &Scenario::default()),
        );
        assert_eq!(v.peak_replicas, 20);
        assert!(
            v.extra_pod_seconds > a.extra_pod_seconds,
            "Value {} vs AverageValue {} pod-seconds",
            v.extra_pod_seconds,
            a.extra_pod_seconds
        );
    }

    #[test]
    fn observed_arrivals_replay_as_the_same_jobs_would_arrive() {
        // Ten jobs observed at 1 s are the default burst of ten at 1 s:
        // the same world, tick for tick, and every job's wait recorded.
        let burst = Scenario {
            burst: 10,
            ..Scenario::default()
        };
        let observed = Scenario {
            burst: 0,
            arrivals: vec![(1.0, 4), (1.0, 6)],
            ..Scenario::default()
        };
        let (a, b) = (plan(&spec(10), &burst), plan(&spec(10), &observed));
        assert_eq!(a.timeline, b.timeline);
        assert_eq!(a.waits, b.waits);
        assert_eq!(b.waits.len(), 10);
        assert_eq!(
            b.waits.iter().map(|w| w.1).fold(0.0, f64::max),
            b.max_wait.unwrap()
        );
        // Out of order, or at a negative time, they are refused.
        for arrivals in [vec![(2.0, 1), (1.0, 1)], vec![(-1.0, 1)]] {
            let bad = Scenario {
                arrivals,
                ..Scenario::default()
            };
            assert!(bad.validate().is_err());
        }
    }

    #[test]
    fn waits_and_pod_seconds_are_counted() {
        // One worker, no scaling room (max 1), 4 jobs of 5 s at 1 s: the
        // last starts at 16 s, 15 s after arriving; one pod at min costs
        // nothing extra.
        let scenario = Scenario {
            burst: 4,
            ..Scenario::default()
        };
        let result = plan(&spec(1), &scenario);
        assert_eq!(result.max_wait, Some(15.0));
        assert_eq!(result.drain_time, Some(20.0));
        assert_eq!(result.extra_pod_seconds, 0.0);
        // A job never taken has no wait to report.
        let stuck = Scenario {
            horizon: 5.0,
            ..scenario
        };
        assert_eq!(plan(&spec(1), &stuck).max_wait, None);
    }

    #[test]
    fn the_fleet_starts_at_min_and_costs_nothing_there() {
        // minReplicas 3 and no load: three pods from t = 0, none above min.
        let idle = Spec { min: 3, ..spec(20) };
        let scenario = Scenario {
            burst: 0,
            horizon: 60.0,
            ..Scenario::default()
        };
        let result = plan(&idle, &scenario);
        assert_eq!(result.ticks[0].replicas, 3);
        assert_eq!(result.extra_pod_seconds, 0.0);
    }

    #[test]
    fn no_load_no_scaling() {
        let scenario = Scenario {
            burst: 0,
            horizon: 60.0,
            ..Scenario::default()
        };
        let plan = plan(&spec(20), &scenario);
        assert_eq!(plan.first_scale_up, None);
        assert_eq!(plan.peak_replicas, 1);
        assert_eq!(plan.drain_time, Some(0.0));
    }

    #[test]
    fn a_steady_rate_within_capacity_holds_steady() {
        // 0.2 jobs/s is exactly one worker's capacity at 5 s per job.
        let scenario = Scenario {
            burst: 0,
            rate: 0.2,
            rate_duration: 600.0,
            horizon: 700.0,
            ..Scenario::default()
        };
        let plan = plan(&spec(20), &scenario);
        assert!(plan.peak_replicas <= 2, "{}", plan.peak_replicas);
        assert!(plan.drain_time.is_some());
    }
}
