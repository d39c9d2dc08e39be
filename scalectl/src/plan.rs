//! `scalectl plan`: simulates an HPA scaling workers on queue length, for
//! capacity planning before a deploy.
//!
//! The world is simulated in steps of 0.1 s: jobs arrive (a burst and/or a
//! steady rate), ready pods take jobs up to their concurrency and finish each
//! after the service time, new pods become ready after the start delay, and
//! removed pods finish the job in hand first (as host-bridge drains). The
//! metric reaches the controller through the real pipeline's lag: RabbitMQ
//! refreshes queue stats every `stats_interval`, Prometheus scrapes every
//! `scrape_interval`, and the controller (`hpa`) syncs every 15 s.

use crate::hpa::{Controller, SYNC_PERIOD, Spec};

const STEP: f64 = 0.1;

/// The load and the workers.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Jobs queued at once at `burst_at`.
    pub burst: u32,
    /// When the burst arrives, seconds. The default, 1 s, is just after a
    /// sync, a scrape and a stats refresh: the pipeline's full lag.
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
    /// Replicas at t = 0.
    pub initial_replicas: i32,
    /// Give up after this many seconds.
    pub horizon: f64,
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
}

/// Slack for comparing simulated times (sums of fractional steps): an event
/// at exactly `t` must count as happened by `t` despite rounding.
const TIME_EPSILON: f64 = 1e-9;

struct Pod {
    ready_at: f64,
    /// When each job in hand finishes.
    busy: Vec<f64>,
    leaving: bool,
}

/// Runs the scenario against the HPA spec.
pub fn plan(spec: &Spec, scenario: &Scenario) -> Plan {
    let mut controller = Controller::default();
    let mut world = World::new(scenario);
    let mut ticks = Vec::new();
    let mut timeline = Vec::new();
    let (mut peak, mut first_scale_up) = (world.replicas, None);
    let steps = (scenario.horizon / STEP) as u64;
    for step in 0..=steps {
        let t = step as f64 * STEP;
        world.arrive(t);
        world.finish(t);
        world.assign(t);
        world.observe(t);
        if every(t, 1.0) {
            timeline.push(world.snapshot(t));
        }
        if every(t, SYNC_PERIOD) {
            let desired = controller.sync(spec, t, world.scraped, world.replicas);
            if desired > world.replicas {
                first_scale_up.get_or_insert(t - scenario.burst_at.min(t));
            }
            world.scale_to(t, desired);
            peak = peak.max(desired);
            ticks.push(world.snapshot(t));
            if world.drain_time.is_some() && desired == spec.min {
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
        drain_time: world.drain_time,
        lower_bound: (f64::from(scenario.burst) / per_round).ceil() * scenario.service_time,
    }
}

/// Whether a clock with this period ticks at `t` (all clocks tick at 0).
fn every(t: f64, period: f64) -> bool {
    period > 0.0
        && ((t / STEP).round() as u64).is_multiple_of((period / STEP).round().max(1.0) as u64)
}

/// The simulated queue, pods and metric pipeline; `plan` advances it one
/// step at a time, one method per phase of a step, in this order.
struct World<'a> {
    scenario: &'a Scenario,
    pods: Vec<Pod>,
    replicas: i32,
    /// Messages ready in the queue.
    ready: u32,
    burst_pending: bool,
    /// Steady-rate jobs that have arrived so far.
    rate_arrived: u32,
    /// Every job the scenario brings (burst and rate).
    total: u32,
    done: u32,
    /// The broker's last stats refresh of ready + unacked.
    stats: f64,
    /// What the last scrape read from the broker's stats.
    scraped: f64,
    drain_time: Option<f64>,
}

impl<'a> World<'a> {
    fn new(scenario: &'a Scenario) -> Self {
        let pods = (0..scenario.initial_replicas)
            .map(|_| Pod {
                ready_at: 0.0,
                busy: vec![],
                leaving: false,
            })
            .collect();
        Self {
            scenario,
            pods,
            replicas: scenario.initial_replicas,
            ready: 0,
            burst_pending: true,
            rate_arrived: 0,
            total: scenario.burst + steady(scenario, scenario.rate_duration),
            done: 0,
            stats: 0.0,
            scraped: 0.0,
            drain_time: None,
        }
    }

    /// The burst (once) and the steady rate's jobs due by `t`.
    fn arrive(&mut self, t: f64) {
        if self.burst_pending && t + TIME_EPSILON >= self.scenario.burst_at {
            self.burst_pending = false;
            self.ready += self.scenario.burst;
        }
        let due = steady(self.scenario, t);
        self.ready += due - self.rate_arrived;
        self.rate_arrived = due;
    }

    /// Finished jobs leave; pods that were removed go once idle.
    fn finish(&mut self, t: f64) {
        for pod in &mut self.pods {
            let before = pod.busy.len();
            pod.busy.retain(|end| *end > t + TIME_EPSILON);
            self.done += (before - pod.busy.len()) as u32;
        }
        self.pods.retain(|p| !(p.leaving && p.busy.is_empty()));
    }

    /// Ready pods take work up to their concurrency; the first time nothing
    /// is left anywhere, the drain time is recorded.
    fn assign(&mut self, t: f64) {
        let scenario = self.scenario;
        for pod in self
            .pods
            .iter_mut()
            .filter(|p| !p.leaving && p.ready_at <= t + TIME_EPSILON)
        {
            while self.ready > 0 && (pod.busy.len() as u32) < scenario.concurrency {
                self.ready -= 1;
                pod.busy.push(t + scenario.service_time);
            }
        }
        let drained = !self.burst_pending
            && self.done >= self.total
            && self.ready == 0
            && in_hand(&self.pods) == 0;
        if drained && self.drain_time.is_none() {
            self.drain_time = Some(t - scenario.burst_at.min(t));
        }
    }

    /// The metric pipeline: broker stats, then the scrape.
    fn observe(&mut self, t: f64) {
        if every(t, self.scenario.stats_interval) {
            self.stats = f64::from(self.ready + in_hand(&self.pods));
        }
        if every(t, self.scenario.scrape_interval) {
            self.scraped = self.stats;
        }
    }

    /// The controller's decision: new pods start, removed pods drain.
    fn scale_to(&mut self, t: f64, desired: i32) {
        if desired > self.replicas {
            for _ in self.replicas..desired {
                self.pods.push(Pod {
                    ready_at: t + self.scenario.pod_start,
                    busy: vec![],
                    leaving: false,
                });
            }
        } else if desired < self.replicas {
            remove(&mut self.pods, (self.replicas - desired) as usize);
        }
        self.replicas = desired;
    }

    /// The state at `t`, as a table row.
    fn snapshot(&self, t: f64) -> Tick {
        let ready_pods = self
            .pods
            .iter()
            .filter(|p| !p.leaving && p.ready_at <= t)
            .count() as u32;
        Tick {
            t,
            ready: self.ready,
            unacked: in_hand(&self.pods),
            metric: self.scraped,
            replicas: self.replicas,
            ready_pods,
        }
    }
}

/// Steady-rate jobs arrived by `t` (the rate stops after its duration).
fn steady(scenario: &Scenario, t: f64) -> u32 {
    (scenario.rate * t.min(scenario.rate_duration) + TIME_EPSILON).floor() as u32
}

fn in_hand(pods: &[Pod]) -> u32 {
    pods.iter().map(|p| p.busy.len() as u32).sum()
}

/// Scale-down: as a ReplicaSet does, pods not yet ready go first, then the
/// idle, then the busiest last; busy pods finish their jobs before leaving.
fn remove(pods: &mut [Pod], count: usize) {
    let mut order: Vec<usize> = (0..pods.len()).filter(|&i| !pods[i].leaving).collect();
    order.sort_by(|&a, &b| {
        let key = |p: &Pod| (p.ready_at <= 0.0 || !p.busy.is_empty(), p.busy.len());
        key(&pods[a])
            .cmp(&key(&pods[b]))
            .then(pods[b].ready_at.total_cmp(&pods[a].ready_at))
    });
    for &i in order.iter().take(count) {
        pods[i].leaving = true;
    }
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
            target: 5.0,
            up: Rules::default_up(),
            down: Rules {
                stabilization: 120.0,
                ..Rules::default_down()
            },
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
