//! The Kubernetes version and feature gates a plan assumes, and what they
//! decide: the controller's tolerance rule (`hpa::ToleranceRule`) and the
//! API server's bound on minReplicas (`validation::Gates`).
//!
//! The default is the project's floor, Kubernetes 1.30 (the Makefile's
//! `K8S_FLOOR`), so that a plan never promises what the oldest supported
//! cluster does not do. Upstream's gates (pkg/features/kube_features.go):
//! - `HPAConfigurableTolerance`: alpha, off, in 1.33 and 1.34; beta, on by
//!   default, from 1.35. Before 1.33 neither the gate nor the field exists.
//! - `HPAScaleToZero`: alpha, off, since 1.16.

use crate::hpa::{Spec, ToleranceRule};
use crate::validation::Gates;

/// The project's floor: `K8S_FLOOR ?= 1.30.0`.
pub const FLOOR: Version = Version(30);
/// The first release with `Tolerances.isWithin` and the
/// `HPAConfigurableTolerance` gate.
const TOLERANCES_SINCE: Version = Version(33);
/// The first release with `HPAConfigurableTolerance` on by default.
const TOLERANCE_ON_SINCE: Version = Version(35);
/// The newest release whose rules scalectl knows; later ones are assumed
/// to behave as it does.
const NEWEST_KNOWN: Version = Version(35);
/// The oldest release scalectl models: autoscaling/v2 went GA in 1.23.
const OLDEST: Version = Version(23);

/// A Kubernetes 1.x release, by its minor number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "1.{}", self.0)
    }
}

/// A version or a gate setting scalectl can't take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Not `1.N` or `v1.N.P`.
    #[error("{0:?} is not a Kubernetes version (e.g. 1.30, v1.35.2)")]
    Version(String),
    /// Older than scalectl models.
    #[error("Kubernetes {0} is older than {OLDEST}, the first with autoscaling/v2")]
    TooOld(Version),
    /// Not `Name=true|false`.
    #[error("{0:?} is not a feature gate setting (e.g. HPAConfigurableTolerance=true)")]
    GateSyntax(String),
    /// A gate the release does not have (kube-controller-manager refuses
    /// to start with it).
    #[error("unrecognized feature gate {gate:?} for Kubernetes {version}")]
    UnknownGate {
        /// The gate as given.
        gate: String,
        /// The release it is not in.
        version: Version,
    },
}

impl std::str::FromStr for Version {
    type Err = ClusterError;

    /// `1.30`, `v1.35`, `1.35.2` (the patch release changes nothing here).
    fn from_str(text: &str) -> Result<Self, ClusterError> {
        let bad = || ClusterError::Version(text.to_owned());
        let trimmed = text.trim();
        let rest = trimmed.strip_prefix('v').unwrap_or(trimmed);
        let mut parts = rest.split('.');
        let (Some("1"), Some(minor)) = (parts.next(), parts.next()) else {
            return Err(bad());
        };
        let minor = minor.parse::<u32>().map_err(|_| bad())?;
        match parts.next() {
            None => {}
            Some(patch) if patch.parse::<u32>().is_ok() && parts.next().is_none() => {}
            Some(_) => return Err(bad()),
        }
        let version = Version(minor);
        if version < OLDEST {
            return Err(ClusterError::TooOld(version));
        }
        Ok(version)
    }
}

/// The cluster a plan assumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    /// The release (kube-apiserver and kube-controller-manager alike).
    pub version: Version,
    /// `HPAConfigurableTolerance`.
    pub configurable_tolerance: bool,
    /// `HPAScaleToZero`.
    pub scale_to_zero: bool,
}

impl Default for Cluster {
    /// The floor with its default gates.
    fn default() -> Self {
        Self::with_defaults(FLOOR)
    }
}

impl Cluster {
    /// A release with its default gates.
    pub fn with_defaults(version: Version) -> Self {
        Self {
            version,
            configurable_tolerance: version >= TOLERANCE_ON_SINCE,
            scale_to_zero: false,
        }
    }

    /// A release with `--feature-gates` applied on top of its defaults
    /// (`Name=true,Other=false`; empty for none).
    pub fn new(version: Version, gates: &str) -> Result<Self, ClusterError> {
        let mut cluster = Self::with_defaults(version);
        for setting in gates.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let syntax = || ClusterError::GateSyntax(setting.to_owned());
            let (name, value) = setting.split_once('=').ok_or_else(syntax)?;
            let value = value.trim().parse::<bool>().map_err(|_| syntax())?;
            match name.trim() {
                "HPAConfigurableTolerance" if version >= TOLERANCES_SINCE => {
                    cluster.configurable_tolerance = value;
                }
                "HPAScaleToZero" => cluster.scale_to_zero = value,
                other => {
                    return Err(ClusterError::UnknownGate {
                        gate: other.to_owned(),
                        version,
                    });
                }
            }
        }
        Ok(cluster)
    }

    /// How the controller applies its tolerance on this cluster.
    pub fn tolerance_rule(&self) -> ToleranceRule {
        if self.version < TOLERANCES_SINCE {
            ToleranceRule::Absolute
        } else if self.configurable_tolerance {
            ToleranceRule::PerDirection
        } else {
            ToleranceRule::Within
        }
    }

    /// What the gates change in the API server's validation.
    pub fn gates(&self) -> Gates {
        Gates {
            scale_to_zero: self.scale_to_zero,
            configurable_tolerance: self.tolerance_rule() == ToleranceRule::PerDirection,
        }
    }

    /// What this cluster makes of `spec` that a reader might not expect;
    /// the plan goes ahead.
    pub fn warnings(&self, spec: &Spec) -> Vec<String> {
        let set = spec.up.tolerance.is_some() || spec.down.tolerance.is_some();
        match self.tolerance_rule() {
            ToleranceRule::Absolute if set => vec![format!(
                "behavior.*.tolerance is ignored: Kubernetes {} has no such field (from 1.33; \
                 kubectl's strict field validation would refuse it there)",
                self.version
            )],
            ToleranceRule::Within if set => vec![
                "behavior.*.tolerance is ignored: HPAConfigurableTolerance is off \
                 (--feature-gates HPAConfigurableTolerance=true, or 1.35)"
                    .to_owned(),
            ],
            _ => vec![],
        }
    }
}

impl std::fmt::Display for Cluster {
    /// For a plan's assumptions: the release and the rules it implies.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kubernetes {}", self.version)?;
        if self.version == FLOOR {
            write!(f, " (the project's floor)")?;
        } else if self.version > NEWEST_KNOWN {
            write!(f, " (rules as {NEWEST_KNOWN})")?;
        }
        let rule = match self.tolerance_rule() {
            ToleranceRule::Absolute => {
                "tolerance |1 - ratio| <= 0.1 (before 1.33); behavior.*.tolerance does not exist"
            }
            ToleranceRule::Within => {
                "tolerance 0.9 <= ratio <= 1.1; behavior.*.tolerance ignored (HPAConfigurableTolerance off)"
            }
            ToleranceRule::PerDirection => {
                "tolerance per direction from behavior.*.tolerance, 0.1 where unset (HPAConfigurableTolerance on)"
            }
        };
        write!(f, ": {rule}")?;
        if self.scale_to_zero {
            write!(f, "; HPAScaleToZero on")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_with_or_without_v_and_patch() {
        assert_eq!("1.30".parse(), Ok(Version(30)));
        assert_eq!("v1.35.2".parse(), Ok(Version(35)));
        for bad in ["", "1", "2.30", "1.x", "1.30.1.1", "1.30-rc"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "1.22".parse::<Version>(),
            Err(ClusterError::TooOld(Version(22)))
        );
    }

    #[test]
    fn the_tolerance_rule_follows_the_version_and_the_gate() {
        assert_eq!(Cluster::default().tolerance_rule(), ToleranceRule::Absolute);
        assert_eq!(
            Cluster::with_defaults(Version(33)).tolerance_rule(),
            ToleranceRule::Within
        );
        assert_eq!(
            Cluster::with_defaults(Version(34)).tolerance_rule(),
            ToleranceRule::Within
        );
        assert_eq!(
            Cluster::with_defaults(Version(35)).tolerance_rule(),
            ToleranceRule::PerDirection
        );
        let gated = Cluster::new(Version(33), "HPAConfigurableTolerance=true").unwrap();
        assert_eq!(gated.tolerance_rule(), ToleranceRule::PerDirection);
        let off = Cluster::new(Version(35), "HPAConfigurableTolerance=false").unwrap();
        assert_eq!(off.tolerance_rule(), ToleranceRule::Within);
        // The gate does not exist before 1.33.
        assert!(matches!(
            Cluster::new(FLOOR, "HPAConfigurableTolerance=true"),
            Err(ClusterError::UnknownGate { .. })
        ));
        assert!(Cluster::new(FLOOR, "HPAScaleToZero").is_err());
        assert!(
            Cluster::new(FLOOR, "HPAScaleToZero=true")
                .unwrap()
                .gates()
                .scale_to_zero
        );
        assert!(
            Cluster::default()
                .to_string()
                .contains("1.30 (the project's floor)")
        );
    }
}
