//! The API server's validation of the HPA fields a plan reads
//! (pkg/apis/autoscaling/validation: `validateHorizontalPodAutoscalerSpec`,
//! `validateMetrics`, `validateMetricTarget`, `validateScalingRules`,
//! `validateScalingPolicy`), so that scalectl refuses what `kubectl apply`
//! would refuse instead of simulating it: maxReplicas 0, minReplicas above
//! maxReplicas, minReplicas 0 without the HPAScaleToZero gate, a window or
//! a period out of range.
//!
//! It judges the object as stored, after the API server's defaulting; it
//! does not read it into a `hpa::Spec` (that is `hpa::Spec::from_hpa`).

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler, MetricSpec, MetricTarget,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use crate::quantity::Quantity;

/// `MaxStabilizationWindowSeconds`.
pub const MAX_STABILIZATION_WINDOW_SECONDS: i32 = 3600;
/// `MaxPeriodSeconds`.
pub const MAX_PERIOD_SECONDS: i32 = 1800;

/// What the cluster's feature gates change in validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gates {
    /// `HPAScaleToZero`: minReplicas may be 0.
    pub scale_to_zero: bool,
    /// `HPAConfigurableTolerance`: `behavior.*.tolerance` is kept, so it is
    /// validated (with the gate off the API server drops the field).
    pub configurable_tolerance: bool,
}

/// The API server's refusal: every invalid field, as `kubectl apply`
/// lists them, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API server would refuse this HPA: {}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// Validates the spec fields a plan reads; `Ok` when the API server would
/// accept them.
pub fn validate(hpa: &HorizontalPodAutoscaler, gates: Gates) -> Result<(), Invalid> {
    let mut errors = vec![];
    let Some(spec) = hpa.spec.as_ref() else {
        return Err(Invalid(vec!["spec: Required value".into()]));
    };
    replica_bounds(spec.min_replicas, spec.max_replicas, gates, &mut errors);
    metrics(
        spec.metrics.as_deref().unwrap_or_default(),
        spec.min_replicas,
        &mut errors,
    );
    if let Some(behavior) = &spec.behavior {
        for (name, rules) in [
            ("scaleUp", &behavior.scale_up),
            ("scaleDown", &behavior.scale_down),
        ] {
            if let Some(rules) = rules {
                scaling_rules(rules, &format!("spec.behavior.{name}"), gates, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Invalid(errors))
    }
}

/// `validateHorizontalPodAutoscalerSpec`'s bounds: minReplicas at least 1
/// (0 with HPAScaleToZero), maxReplicas at least 1 and at least min.
fn replica_bounds(min: Option<i32>, max: i32, gates: Gates, errors: &mut Vec<String>) {
    let floor = if gates.scale_to_zero { 0 } else { 1 };
    if let Some(min) = min
        && min < floor
    {
        let why = if floor == 1 && min == 0 {
            " (0 needs the HPAScaleToZero feature gate)"
        } else {
            ""
        };
        errors.push(format!(
            "spec.minReplicas: Invalid value: {min}: must be greater than or equal to {floor}{why}"
        ));
    }
    if max < 1 {
        errors.push(format!(
            "spec.maxReplicas: Invalid value: {}: must be greater than 0",
            max
        ));
    }
    if let Some(min) = min
        && max < min
    {
        errors.push(format!(
            "spec.maxReplicas: Invalid value: {}: must be greater than or equal to `minReplicas`",
            max
        ));
    }
}

/// `validateMetrics`, for the targets: each External target's quantities,
/// and at least one Object or External metric when minReplicas is 0.
fn metrics(metrics: &[MetricSpec], min: Option<i32>, errors: &mut Vec<String>) {
    for (i, metric) in metrics.iter().enumerate() {
        if let Some(external) = &metric.external {
            let path = format!("spec.metrics[{i}].external.target");
            metric_target(&external.target, &path, errors);
        }
    }
    let scales_on_objects = metrics
        .iter()
        .any(|m| m.type_ == "Object" || m.type_ == "External");
    if min == Some(0) && !scales_on_objects {
        errors.push(
            "spec.metrics: Forbidden: must specify at least one Object or External metric to support scaling to zero replicas"
                .into(),
        );
    }
}

/// `validateMetricTarget` and `validateExternalSource`: a known type, a
/// positive value or averageValue, not both.
fn metric_target(target: &MetricTarget, path: &str, errors: &mut Vec<String>) {
    if !["Utilization", "Value", "AverageValue"].contains(&target.type_.as_str()) {
        errors.push(format!(
            "{path}.type: Invalid value: {:?}: must be either Utilization, Value, or AverageValue",
            target.type_
        ));
    }
    for (field, quantity) in [
        ("value", &target.value),
        ("averageValue", &target.average_value),
    ] {
        if let Some(q) = quantity
            && sign(q) != Some(1)
        {
            errors.push(format!(
                "{path}.{field}: Invalid value: {:?}: must be positive",
                q.0
            ));
        }
    }
    match (&target.value, &target.average_value) {
        (None, None) => errors.push(format!(
            "{path}.averageValue: Required value: must set either a target value for metric or a per-pod target"
        )),
        (Some(_), Some(_)) => errors.push(format!(
            "{path}.value: Forbidden: may not set both a target value for metric and a per-pod target"
        )),
        _ => {}
    }
}

/// A quantity's sign; `None` when it does not read (the API server would
/// not have decoded it).
fn sign(q: &ApiQuantity) -> Option<i32> {
    q.0.parse::<Quantity>().ok().map(|q| q.signum())
}

/// `validateScalingRules` and `validateScalingPolicy`.
fn scaling_rules(rules: &HPAScalingRules, path: &str, gates: Gates, errors: &mut Vec<String>) {
    if let Some(window) = rules.stabilization_window_seconds {
        if window < 0 {
            errors.push(format!(
                "{path}.stabilizationWindowSeconds: Invalid value: {window}: must be greater than or equal to zero"
            ));
        } else if window > MAX_STABILIZATION_WINDOW_SECONDS {
            errors.push(format!(
                "{path}.stabilizationWindowSeconds: Invalid value: {window}: must be less than or equal to {MAX_STABILIZATION_WINDOW_SECONDS}"
            ));
        }
    }
    if let Some(select) = &rules.select_policy
        && !["Max", "Min", "Disabled"].contains(&select.as_str())
    {
        errors.push(format!(
            "{path}.selectPolicy: Unsupported value: {select:?}: supported values: \"Disabled\", \"Max\", \"Min\""
        ));
    }
    // Defaulting fills policies only when the field is absent; an empty
    // list stays empty and is refused.
    if rules.policies.as_ref().is_some_and(Vec::is_empty) {
        errors.push(format!(
            "{path}.policies: Required value: must specify at least one Policy"
        ));
    }
    for (i, policy) in rules.policies.iter().flatten().enumerate() {
        scaling_policy(policy, &format!("{path}.policies[{i}]"), errors);
    }
    if gates.configurable_tolerance
        && let Some(q) = &rules.tolerance
        && sign(q).is_none_or(|s| s < 0)
    {
        errors.push(format!(
            "{path}.tolerance: Invalid value: {:?}: must be greater than or equal to 0",
            q.0
        ));
    }
}

/// `validateScalingPolicy`: a known type, a positive value, a period of
/// 1 to 1800 s.
fn scaling_policy(policy: &HPAScalingPolicy, at: &str, errors: &mut Vec<String>) {
    if policy.type_ != "Pods" && policy.type_ != "Percent" {
        errors.push(format!(
            "{at}.type: Unsupported value: {:?}: supported values: \"Percent\", \"Pods\"",
            policy.type_
        ));
    }
    if policy.value <= 0 {
        errors.push(format!(
            "{at}.value: Invalid value: {}: must be greater than zero",
            policy.value
        ));
    }
    if policy.period_seconds <= 0 {
        errors.push(format!(
            "{at}.periodSeconds: Invalid value: {}: must be greater than zero",
            policy.period_seconds
        ));
    } else if policy.period_seconds > MAX_PERIOD_SECONDS {
        errors.push(format!(
            "{at}.periodSeconds: Invalid value: {}: must be less than or equal to {MAX_PERIOD_SECONDS}",
            policy.period_seconds
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(spec: serde_json::Value) -> HorizontalPodAutoscaler {
        let mut full = serde_json::json!({
            "scaleTargetRef": { "kind": "Deployment", "name": "w" },
            "maxReplicas": 20,
            "metrics": [{
                "type": "External",
                "external": {
                    "metric": { "name": "m" },
                    "target": { "type": "AverageValue", "averageValue": "5" }
                }
            }]
        });
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": { "name": "w" },
            "spec": full,
        }))
        .unwrap()
    }

    fn refused(spec: serde_json::Value, gates: Gates) -> String {
        validate(&hpa(spec), gates)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn the_replica_bounds_are_checked_as_the_api_server_does() {
        assert_eq!(
            validate(&hpa(serde_json::json!({})), Gates::default()),
            Ok(())
        );
        let off = Gates::default();
        let says = refused(serde_json::json!({ "maxReplicas": 0 }), off);
        assert!(
            says.contains("spec.maxReplicas: Invalid value: 0: must be greater than 0"),
            "{says}"
        );
        let says = refused(serde_json::json!({ "minReplicas": -2 }), off);
        assert!(
            says.contains("spec.minReplicas: Invalid value: -2"),
            "{says}"
        );
        let says = refused(
            serde_json::json!({ "minReplicas": 3, "maxReplicas": 1 }),
            off,
        );
        assert!(
            says.contains("must be greater than or equal to `minReplicas`"),
            "{says}"
        );
        assert!(!says.contains('\n'), "one line: {says}");
        // minReplicas 0 only with HPAScaleToZero.
        let says = refused(serde_json::json!({ "minReplicas": 0 }), off);
        assert!(says.contains("HPAScaleToZero"), "{says}");
        let on = Gates {
            scale_to_zero: true,
            ..off
        };
        assert_eq!(
            validate(&hpa(serde_json::json!({ "minReplicas": 0 })), on),
            Ok(())
        );
        // Even then, not with resource metrics alone.
        let cpu_only = serde_json::json!({
            "minReplicas": 0,
            "metrics": [{ "type": "Resource", "resource": { "name": "cpu",
                "target": { "type": "Utilization", "averageUtilization": 80 } } }]
        });
        assert!(refused(cpu_only, on).contains("at least one Object or External metric"));
    }

    #[test]
    fn targets_and_behavior_are_checked() {
        let off = Gates::default();
        let zero = serde_json::json!({ "metrics": [{ "type": "External", "external": {
            "metric": { "name": "m" }, "target": { "type": "AverageValue", "averageValue": "0" } } }] });
        assert!(
            refused(zero, off).contains("averageValue: Invalid value: \"0\": must be positive")
        );
        let behavior =
            |rules: serde_json::Value| serde_json::json!({ "behavior": { "scaleUp": rules } });
        for (rules, says) in [
            (
                serde_json::json!({ "stabilizationWindowSeconds": 3601 }),
                "less than or equal to 3600",
            ),
            (
                serde_json::json!({ "stabilizationWindowSeconds": -1 }),
                "greater than or equal to zero",
            ),
            (
                serde_json::json!({ "selectPolicy": "Most" }),
                "selectPolicy: Unsupported value",
            ),
            (serde_json::json!({ "policies": [] }), "at least one Policy"),
            (
                serde_json::json!({ "policies": [{ "type": "Pods", "value": 0, "periodSeconds": 15 }] }),
                "value: Invalid value: 0",
            ),
            (
                serde_json::json!({ "policies": [{ "type": "Pods", "value": 1, "periodSeconds": 1801 }] }),
                "less than or equal to 1800",
            ),
        ] {
            let got = refused(behavior(rules.clone()), off);
            assert!(got.contains(says), "{rules}: {got}");
        }
        // A negative tolerance: dropped with the gate off, refused with it on.
        let negative = behavior(serde_json::json!({ "tolerance": "-50m" }));
        assert_eq!(validate(&hpa(negative.clone()), off), Ok(()));
        let on = Gates {
            configurable_tolerance: true,
            ..off
        };
        assert!(refused(negative, on).contains("tolerance: Invalid value"));
    }
}
