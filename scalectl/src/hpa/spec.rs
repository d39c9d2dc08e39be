//! The parts of an HPA the controller reads for one External metric, as
//! the API server stores them after defaulting: the target in milli-units,
//! the replica bounds, and `behavior` with its defaults. Whether the spec
//! would be accepted at all is `validation`'s question, not this module's.

use k8s_openapi::api::autoscaling::v2::{HPAScalingRules, HorizontalPodAutoscaler};

use crate::quantity::{Milli, Quantity};

/// The controller's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// The controller's sync period (`--horizontal-pod-autoscaler-sync-period`), seconds.
pub const SYNC_PERIOD: f64 = 15.0;
/// The same in milliseconds, the controller's clock.
pub const SYNC_PERIOD_MS: i64 = 15_000;
/// The controller's `--horizontal-pod-autoscaler-downscale-stabilization`
/// (5 minutes), seconds, used when the HPA has no `behavior`.
pub const DOWNSCALE_STABILIZATION: i32 = 300;

/// One scaling policy; `period` is `periodSeconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// At most this many pods per period.
    Pods {
        /// Pods.
        value: i32,
        /// `periodSeconds`.
        period: i32,
    },
    /// At most this percent of the pods at the period's start, per period.
    Percent {
        /// Percent.
        value: i32,
        /// `periodSeconds`.
        period: i32,
    },
}

impl Policy {
    /// `periodSeconds`.
    pub fn period(&self) -> i32 {
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
    pub stabilization: i32,
    /// `policies`.
    pub policies: Vec<Policy>,
    /// `selectPolicy`.
    pub select: Select,
    /// `tolerance` as the HPA sets it (`None` when unset). Whether the
    /// controller uses it is the cluster's `ToleranceRule`.
    pub tolerance: Option<f64>,
}

impl Rules {
    /// The API server's default for scale-up: no stabilization; 4 pods or
    /// 100 % per 15 s, whichever is more.
    pub fn default_up() -> Self {
        Self {
            stabilization: 0,
            policies: vec![
                Policy::Pods {
                    value: 4,
                    period: 15,
                },
                Policy::Percent {
                    value: 100,
                    period: 15,
                },
            ],
            select: Select::Max,
            tolerance: None,
        }
    }

    /// The API server's default for scale-down: 300 s stabilization; 100 %
    /// per 15 s.
    pub fn default_down() -> Self {
        Self {
            stabilization: 300,
            policies: vec![Policy::Percent {
                value: 100,
                period: 15,
            }],
            select: Select::Max,
            tolerance: None,
        }
    }

    /// The rules as the API server defaults them: unset fields take the
    /// direction's default. Policies of an unknown type are left out here;
    /// `validation` refuses them.
    fn from_api(rules: Option<&HPAScalingRules>, default: Rules) -> Result<Rules, SpecError> {
        let Some(rules) = rules else {
            return Ok(default);
        };
        let policies = rules.policies.as_ref().map(|ps| {
            ps.iter()
                .filter_map(|p| match p.type_.as_str() {
                    "Pods" => Some(Policy::Pods {
                        value: p.value,
                        period: p.period_seconds,
                    }),
                    "Percent" => Some(Policy::Percent {
                        value: p.value,
                        period: p.period_seconds,
                    }),
                    _ => None,
                })
                .collect()
        });
        let tolerance = match &rules.tolerance {
            Some(q) => Some(
                q.0.parse::<Quantity>()
                    .map_err(|e| SpecError::Quantity("tolerance", e))?
                    .approximate_f64(),
            ),
            None => None,
        };
        Ok(Rules {
            stabilization: rules
                .stabilization_window_seconds
                .unwrap_or(default.stabilization),
            policies: policies.unwrap_or(default.policies),
            select: match rules.select_policy.as_deref() {
                Some("Min") => Select::Min,
                Some("Disabled") => Select::Disabled,
                _ => Select::Max,
            },
            tolerance,
        })
    }
}

/// An External metric's target (`target.type`), in milli-units as the
/// controller reads it (`MilliValue`, rounded up: "1n" is 1m, never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `AverageValue`: the metric per replica. Upstream
    /// `GetExternalPerPodMetricReplicas`: `ceil(metric / target)`, whatever
    /// the current count. Ours.
    AverageValue(Milli),
    /// `Value`: the metric as a whole. Upstream `GetExternalMetricReplicas`
    /// and `getUsageRatioReplicaCount`: `ceil(metric / target × ready
    /// pods)`, so on a queue that a fleet is still draining the count keeps
    /// multiplying.
    Value(Milli),
}

impl Target {
    /// The target's quantity.
    pub fn value(self) -> Milli {
        match self {
            Target::AverageValue(v) | Target::Value(v) => v,
        }
    }
}

impl std::fmt::Display for Target {
    /// As the HPA's YAML spells it: `averageValue 5`, `value 1.4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AverageValue(v) => write!(f, "averageValue {v}"),
            Target::Value(v) => write!(f, "value {v}"),
        }
    }
}

/// An HPA `Spec::from_hpa` can't read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No `spec`.
    #[error("the HPA has no spec")]
    NoSpec,
    /// No External metric to simulate.
    #[error("the HPA has no External metric")]
    NoExternal,
    /// A target type scalectl does not model.
    #[error("the External target is {0:?}; scalectl reads AverageValue and Value")]
    TargetType(String),
    /// The target's quantity is missing.
    #[error("the External target has no {0}")]
    Missing(&'static str),
    /// A quantity that does not read.
    #[error("{0}: {1}")]
    Quantity(&'static str, crate::quantity::QuantityError),
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
    /// Value target. It does not judge the values (`validation` does).
    pub fn from_hpa(hpa: &HorizontalPodAutoscaler) -> Result<Self, SpecError> {
        let spec = hpa.spec.as_ref().ok_or(SpecError::NoSpec)?;
        let external = spec
            .metrics
            .iter()
            .flatten()
            .find_map(|m| m.external.as_ref())
            .ok_or(SpecError::NoExternal)?;
        let (field, quantity, target): (_, _, fn(Milli) -> Target) =
            match external.target.type_.as_str() {
                "AverageValue" => (
                    "averageValue",
                    external.target.average_value.as_ref(),
                    Target::AverageValue,
                ),
                "Value" => ("value", external.target.value.as_ref(), Target::Value),
                other => return Err(SpecError::TargetType(other.to_owned())),
            };
        let quantity = quantity.ok_or(SpecError::Missing(field))?;
        let milli =
            crate::quantity::parse_milli(&quantity.0).map_err(|e| SpecError::Quantity(field, e))?;
        let behavior = spec.behavior.as_ref();
        Ok(Self {
            has_behavior: behavior.is_some(),
            min: spec.min_replicas.unwrap_or(1),
            max: spec.max_replicas,
            target: target(milli),
            up: Rules::from_api(
                behavior.and_then(|b| b.scale_up.as_ref()),
                Rules::default_up(),
            )?,
            down: Rules::from_api(
                behavior.and_then(|b| b.scale_down.as_ref()),
                Rules::default_down(),
            )?,
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
        if let Some(tolerance) = self.tolerance {
            write!(f, ", tolerance {tolerance}")?;
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
