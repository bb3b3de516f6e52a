//! A rollout plan: ordered phases of steps, each followed by gates. Plans are snapshotted into
//! every rollout, so they serialise to JSON and never change once a rollout has one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Span;

/// The ordered phases a rollout walks through.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Phases in order; a phase starts only when the one before it succeeded or was skipped.
    pub phases: Vec<PhaseSpec>,
}

/// One phase: steps run in order, then every gate must pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseSpec {
    /// Name shown in the timeline (`backend`, `canary-10`).
    pub name: String,
    /// Steps, run one after another.
    pub steps: Vec<StepSpec>,
    /// Gates, evaluated together once every step succeeded.
    pub gates: Vec<GateSpec>,
    /// What a failed step or gate leads to.
    pub on_failure: OnFailure,
}

/// What a failure in a phase leads to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Roll the environment back to its last known-good release, automatically.
    #[default]
    Rollback,
    /// Pause for a person to retry, skip the gate or roll back.
    Pause,
    /// Mark the rollout failed and leave the environment as it is.
    Fail,
}

/// One thing a phase does against a provider (or the clock).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepSpec {
    /// Deploy the release's artifact of a component.
    Deploy {
        /// Component name.
        component: String,
    },
    /// Return a component to the target release (natively where the platform can).
    Rollback {
        /// Component name.
        component: String,
    },
    /// Send a share of traffic to the newly deployed version.
    Traffic {
        /// Component name.
        component: String,
        /// Percent of traffic, 0 to 100.
        percent: u8,
    },
    /// Set (or, with `null`, unset) config vars and flags of a component.
    Config {
        /// Component name.
        component: String,
        /// Variables to set; `None` unsets.
        vars: BTreeMap<String, Option<String>>,
    },
    /// Run a one-off job, such as migrations.
    Job {
        /// Component name.
        component: String,
        /// Command to run.
        command: String,
        /// The command that undoes it, run first when the rollout is rolled back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        down: Option<String>,
    },
    /// Wait a fixed time.
    Wait {
        /// How long.
        duration: Span,
    },
}

impl StepSpec {
    /// The step's kind as stored in `step_runs.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            StepSpec::Deploy { .. } => "deploy",
            StepSpec::Rollback { .. } => "rollback",
            StepSpec::Traffic { .. } => "traffic",
            StepSpec::Config { .. } => "config",
            StepSpec::Job { .. } => "job",
            StepSpec::Wait { .. } => "wait",
        }
    }

    /// The component the step acts on, if any.
    pub fn component(&self) -> Option<&str> {
        match self {
            StepSpec::Deploy { component }
            | StepSpec::Rollback { component }
            | StepSpec::Traffic { component, .. }
            | StepSpec::Config { component, .. }
            | StepSpec::Job { component, .. } => Some(component),
            StepSpec::Wait { .. } => None,
        }
    }

    /// A one-line description for timelines and events.
    pub fn describe(&self) -> String {
        match self {
            StepSpec::Deploy { component } => format!("deploy {component}"),
            StepSpec::Rollback { component } => format!("roll back {component}"),
            StepSpec::Traffic { component, percent } => {
                format!("shift {percent}% of {component} traffic")
            }
            StepSpec::Config { component, vars } => {
                let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
                format!("set {} on {component}", keys.join(", "))
            }
            StepSpec::Job {
                component, command, ..
            } => format!("run `{command}` on {component}"),
            StepSpec::Wait { duration } => format!("wait {duration}"),
        }
    }
}

/// A check that must pass before the next phase starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GateSpec {
    /// HTTP health checks of components' health URLs (or the provider's own view).
    Health(HealthGate),
    /// Let the new version run this long without other evidence.
    Soak {
        /// How long.
        duration: Span,
    },
    /// Wait for people to approve.
    Approval {
        /// Approvals needed.
        required: u32,
        /// After this long without enough approvals the gate fails.
        timeout: Span,
    },
    /// A Prometheus instant query compared with thresholds.
    Prometheus(PrometheusGate),
    /// An external system confirms by answering 2xx (Flagger's confirm style).
    Webhook(WebhookGate),
}

impl GateSpec {
    /// The gate's kind as stored in `gate_checks.gate_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            GateSpec::Health(_) => "health",
            GateSpec::Soak { .. } => "soak",
            GateSpec::Approval { .. } => "approval",
            GateSpec::Prometheus(_) => "prometheus",
            GateSpec::Webhook(_) => "webhook",
        }
    }

    /// A one-line description for timelines and events.
    pub fn describe(&self) -> String {
        match self {
            GateSpec::Health(gate) => format!(
                "health of {} every {} ({} failures fail, {} successes pass)",
                gate.components.join(", "),
                gate.interval,
                gate.failures,
                gate.successes
            ),
            GateSpec::Soak { duration } => format!("soak {duration}"),
            GateSpec::Approval { required, .. } => format!("{required} approval(s)"),
            GateSpec::Prometheus(gate) => {
                format!("prometheus `{}` {}", gate.query, gate.condition())
            }
            GateSpec::Webhook(gate) => format!("confirm from {}", gate.url),
        }
    }
}

/// Health gate settings. The seeds use 30 s interval, 10 s timeout, 3 failures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthGate {
    /// Components probed each round; a round passes when all of them are healthy.
    pub components: Vec<String>,
    /// Time between rounds.
    pub interval: Span,
    /// Timeout of one probe.
    pub timeout: Span,
    /// Consecutive failed rounds that fail the gate.
    pub failures: u32,
    /// Consecutive healthy rounds that pass the gate.
    pub successes: u32,
    /// Wait before the first round.
    pub initial_delay: Span,
    /// With no verdict after this long, the gate is inconclusive.
    pub deadline: Span,
}

/// Prometheus gate settings.
///
/// Each round runs `query` (an instant query; its first sample is compared) and, when
/// `min_samples` is set, `samples_query`. A round is a pass, a failure, an error (Prometheus
/// unreachable or refusing the query), no data (an empty result or NaN) or too few samples.
/// The gate fails at `failures` failed rounds, is inconclusive at `consecutive_errors` errors in
/// a row or at no data (unless `no_data: fail`), and passes after `count` rounds (when set) or
/// once passes in a row cover `hold`. Rounds with too few samples count for nothing: without
/// enough traffic the gate waits, and at its deadline it is inconclusive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrometheusGate {
    /// Base URL of the Prometheus server.
    pub url: String,
    /// PromQL instant query; its first sample is compared.
    pub query: String,
    /// Passes when the value is below this.
    pub below: Option<f64>,
    /// Passes when the value is above this.
    pub above: Option<f64>,
    /// Passes when the value lies within `[min, max]` (inclusive).
    #[serde(default)]
    pub range: Option<(f64, f64)>,
    /// Time between queries.
    pub interval: Span,
    /// How long the condition must hold (consecutive passes covering this span).
    pub hold: Span,
    /// Rounds to take; the gate passes after the last if it has not failed.
    #[serde(default)]
    pub count: Option<u32>,
    /// Failed rounds (not necessarily in a row) that fail the gate.
    pub failures: u32,
    /// Whether `failures` counts failed rounds apart (plans made since it does); plans stored
    /// before count failures in a row, as they did when they were made.
    #[serde(default)]
    pub failures_apart: bool,
    /// Errors in a row (Prometheus unreachable, the query refused) that make it inconclusive.
    #[serde(default = "one")]
    pub consecutive_errors: u32,
    /// The sample count behind a value (e.g. requests in the window); below `min_samples` a
    /// round counts for nothing.
    #[serde(default)]
    pub samples_query: Option<String>,
    /// Minimum `samples_query` value for a round to count.
    #[serde(default)]
    pub min_samples: Option<f64>,
    /// Wait before the first query.
    pub initial_delay: Span,
    /// What an empty result or NaN means.
    pub no_data: NoData,
    /// With no verdict after this long, the gate is inconclusive.
    pub deadline: Span,
}

/// Plans stored before `consecutive_errors` existed made every error inconclusive at once.
fn one() -> u32 {
    1
}

impl PrometheusGate {
    /// Whether `value` meets every condition.
    pub fn accepts(&self, value: f64) -> bool {
        self.below.is_none_or(|limit| value < limit)
            && self.above.is_none_or(|limit| value > limit)
            && self
                .range
                .is_none_or(|(min, max)| (min..=max).contains(&value))
    }

    /// The conditions as people read them: `< 0.01`, `> 5 and < 10`, `in [1, 2]`.
    pub fn condition(&self) -> String {
        let mut parts = Vec::new();
        if let Some(limit) = self.above {
            parts.push(format!("> {limit}"));
        }
        if let Some(limit) = self.below {
            parts.push(format!("< {limit}"));
        }
        if let Some((min, max)) = self.range {
            parts.push(format!("in [{min}, {max}]"));
        }
        parts.join(" and ")
    }
}

/// What one measurement of a metric gate found, beyond its verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    /// A value was compared (or a probe answered).
    #[default]
    Measured,
    /// The query could not be run: Prometheus unreachable, slow, or refusing it.
    Error,
    /// An empty result or NaN.
    NoData,
    /// Fewer samples than `min_samples`: the round counts for nothing.
    TooFewSamples,
}

impl Reading {
    /// As stored in a check's detail (`None` for a measured value).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Reading::Measured => None,
            Reading::Error => Some("error"),
            Reading::NoData => Some("no_data"),
            Reading::TooFewSamples => Some("too_few_samples"),
        }
    }

    /// Reads a check's detail `reading` field; anything else is a measured value.
    pub fn parse(text: Option<&str>) -> Reading {
        match text {
            Some("error") => Reading::Error,
            Some("no_data") => Reading::NoData,
            Some("too_few_samples") => Reading::TooFewSamples,
            _ => Reading::Measured,
        }
    }
}

/// What a metric gate makes of no data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// Pause for a person (the default: no data never passes silently).
    #[default]
    Inconclusive,
    /// Count as a failed check.
    Fail,
}

/// Webhook gate settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookGate {
    /// URL that is POSTed the rollout's details.
    pub url: String,
    /// Time between attempts.
    pub interval: Span,
    /// Timeout of one call.
    pub timeout: Span,
    /// Consecutive non-2xx answers that fail the gate.
    pub failures: u32,
}

impl Plan {
    /// Components the plan deploys (in first-deployed order).
    pub fn deployed_components(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for phase in &self.phases {
            for step in &phase.steps {
                if let StepSpec::Deploy { component } = step {
                    if !seen.contains(component) {
                        seen.push(component.clone());
                    }
                }
            }
        }
        seen
    }

    /// The first health gate that covers `component`, if the plan has one.
    pub fn health_gate_for(&self, component: &str) -> Option<&HealthGate> {
        self.phases
            .iter()
            .flat_map(|phase| &phase.gates)
            .find_map(|gate| match gate {
                GateSpec::Health(health) if health.components.iter().any(|c| c == component) => {
                    Some(health)
                }
                _ => None,
            })
    }
}

/// What a rollback restores.
#[derive(Clone, Debug, PartialEq)]
pub struct RollbackScope {
    /// Components to return to the target release.
    pub components: Vec<String>,
    /// Config vars to restore: component → key → previous value (`None` unsets).
    pub config: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// Down jobs of the undone rollout's jobs that ran, last first: (component, command). They
    /// run before anything is restored, on the release that knows how to undo them.
    pub jobs: Vec<(String, String)>,
}

/// The plan of a rollback rollout: fast-tracked (no canary traffic steps, no approvals, no
/// soaks), but the health of what it restores is still verified against the health gates the
/// rolled-back plan declared for those components.
pub fn rollback_plan(source: &Plan, scope: &RollbackScope) -> Plan {
    let mut steps: Vec<StepSpec> = scope
        .jobs
        .iter()
        .map(|(component, command)| StepSpec::Job {
            component: component.clone(),
            command: command.clone(),
            down: None,
        })
        .collect();
    steps.extend(scope.components.iter().map(|component| StepSpec::Rollback {
        component: component.clone(),
    }));
    for (component, vars) in &scope.config {
        steps.push(StepSpec::Config {
            component: component.clone(),
            vars: vars.clone(),
        });
    }
    let mut gates: Vec<GateSpec> = Vec::new();
    for component in &scope.components {
        let Some(health) = source.health_gate_for(component) else {
            continue;
        };
        // Merge components that share the same probe settings into one gate.
        let existing = gates.iter_mut().find_map(|gate| match gate {
            GateSpec::Health(existing)
                if existing.interval == health.interval
                    && existing.failures == health.failures
                    && existing.successes == health.successes =>
            {
                Some(existing)
            }
            _ => None,
        });
        match existing {
            Some(gate) => gate.components.push(component.clone()),
            None => gates.push(GateSpec::Health(HealthGate {
                components: vec![component.clone()],
                ..health.clone()
            })),
        }
    }
    Plan {
        phases: vec![PhaseSpec {
            name: "rollback".to_owned(),
            steps,
            gates,
            on_failure: OnFailure::Fail,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(components: &[&str]) -> GateSpec {
        GateSpec::Health(HealthGate {
            components: components.iter().map(|c| c.to_string()).collect(),
            interval: Span::secs(30),
            timeout: Span::secs(10),
            failures: 3,
            successes: 1,
            initial_delay: Span::default(),
            deadline: Span::secs(600),
        })
    }

    #[test]
    fn rollback_plans_skip_canary_and_approvals_but_keep_health() {
        let source = Plan {
            phases: vec![
                PhaseSpec {
                    name: "canary".into(),
                    steps: vec![
                        StepSpec::Deploy {
                            component: "api".into(),
                        },
                        StepSpec::Traffic {
                            component: "api".into(),
                            percent: 10,
                        },
                    ],
                    gates: vec![health(&["api"])],
                    on_failure: OnFailure::Rollback,
                },
                PhaseSpec {
                    name: "web".into(),
                    steps: vec![StepSpec::Deploy {
                        component: "web".into(),
                    }],
                    gates: vec![GateSpec::Approval {
                        required: 1,
                        timeout: Span::secs(60),
                    }],
                    on_failure: OnFailure::Pause,
                },
            ],
        };
        let plan = rollback_plan(
            &source,
            &RollbackScope {
                components: vec!["api".into(), "web".into()],
                config: BTreeMap::new(),
                jobs: vec![("api".into(), "rails db:rollback".into())],
            },
        );
        assert_eq!(plan.phases.len(), 1);
        let phase = &plan.phases[0];
        assert_eq!(phase.on_failure, OnFailure::Fail);
        assert_eq!(
            phase.steps[0],
            StepSpec::Job {
                component: "api".into(),
                command: "rails db:rollback".into(),
                down: None,
            },
            "the down job runs before anything is restored"
        );
        assert!(phase.steps[1..]
            .iter()
            .all(|step| matches!(step, StepSpec::Rollback { .. })));
        assert_eq!(phase.gates, vec![health(&["api"])]);
    }
}
