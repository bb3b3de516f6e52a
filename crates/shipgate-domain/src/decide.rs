//! The rollout state machine as a pure function: given what is recorded about a rollout and the
//! time, [`decide`] says the one next thing to do. The engine records that answer, performs it
//! (a provider call, a probe, or nothing), records the outcome, and asks again.
//!
//! No I/O happens here, so every rule is tested without a database or a network.

use chrono::{DateTime, Utc};

use crate::duration::Span;
use crate::plan::{GateSpec, OnFailure, Plan, PrometheusGate, Reading, StepSpec};
use crate::state::{PhaseState, RolloutKind, RolloutState, StepState, Verdict};

/// Engine timing that applies to every rollout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Time between polls of a submitted provider operation.
    pub poll_interval: Span,
    /// A provider operation not settled after this long fails as timed out.
    pub step_timeout: Span,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll_interval: Span::secs(2),
            step_timeout: Span::secs(15 * 60),
        }
    }
}

/// Everything [`decide`] needs to know about a rollout.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutView {
    /// Current state.
    pub state: RolloutState,
    /// Kind.
    pub kind: RolloutKind,
    /// The snapshotted plan.
    pub plan: Plan,
    /// One view per plan phase, same order.
    pub phases: Vec<PhaseView>,
    /// Rollout-level approvals (environment policy); `None` when none are required.
    pub approval: Option<ApprovalView>,
    /// Whether there is a known-good release to roll back to.
    pub can_roll_back: bool,
    /// When the rollout was created.
    pub created_at: DateTime<Utc>,
}

/// Rollout-level approval state.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalView {
    /// Approvals needed.
    pub required: u32,
    /// Distinct approvals given.
    pub approvals: u32,
    /// A rejection, with its comment.
    pub rejection: Option<String>,
    /// The request expires at this time.
    pub expires_at: DateTime<Utc>,
}

/// What is recorded about one phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseView {
    /// Current state.
    pub state: PhaseState,
    /// When its gates started counting (set on entering `verifying`).
    pub verifying_at: Option<DateTime<Utc>>,
    /// When a person last asked to retry it.
    pub retry_requested_at: Option<DateTime<Utc>>,
    /// The latest attempt of each step, by step index (`None` before the first attempt).
    pub steps: Vec<Option<StepView>>,
    /// Per gate: its checks and approvals.
    pub gates: Vec<GateView>,
}

/// The latest attempt of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepView {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// State.
    pub state: StepState,
    /// When the intent was recorded.
    pub created_at: DateTime<Utc>,
    /// When the provider accepted it.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When it was last polled.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// When it settled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One measurement of a gate.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckView {
    /// Verdict of this measurement.
    pub verdict: Verdict,
    /// When.
    pub at: DateTime<Utc>,
    /// A person skipped the gate (counts as a pass for the whole gate).
    pub overridden: bool,
    /// Short explanation (status code, value, error).
    pub summary: String,
    /// What a metric round found beyond its verdict (errors, no data, too few samples).
    pub reading: Reading,
}

/// What is recorded about one gate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GateView {
    /// Checks, oldest first.
    pub checks: Vec<CheckView>,
    /// Approvals given (approval gates).
    pub approvals: u32,
    /// A rejection with its comment (approval gates).
    pub rejection: Option<String>,
}

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Record a state change; no outside call.
    Transition(Transition),
    /// Record the intent of a step attempt, then call the provider.
    Submit {
        /// Phase index.
        phase: usize,
        /// Step index.
        step: usize,
        /// Attempt number.
        attempt: u32,
    },
    /// An attempt's intent is recorded but no provider reference is: ask the provider by the
    /// attempt's natural key whether it happened, and submit only if it did not.
    Reconcile {
        /// Phase index.
        phase: usize,
        /// Step index.
        step: usize,
    },
    /// Ask the provider how a submitted operation is doing.
    Poll {
        /// Phase index.
        phase: usize,
        /// Step index.
        step: usize,
    },
    /// Take one measurement of a gate.
    Check {
        /// Phase index.
        phase: usize,
        /// Gate index.
        gate: usize,
    },
    /// Nothing to do before this time.
    SleepUntil(DateTime<Utc>),
    /// Nothing to do until a person, another rollout or a wake-up acts.
    Idle,
}

/// A recorded state change.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// `queued` → the environment is free: start (or wait for approvals).
    Activate,
    /// `pending_approval` → `in_progress`.
    Start,
    /// A phase begins its steps.
    StartPhase(usize),
    /// A submitted step's operation did not settle in time.
    StepTimedOut {
        /// Phase index.
        phase: usize,
        /// Step index.
        step: usize,
    },
    /// A phase's steps are done; its gates start counting.
    Verify(usize),
    /// A phase passed its gates.
    PhaseSucceeded(usize),
    /// A phase failed and the rollout rolls back.
    RollBack {
        /// Phase index.
        phase: usize,
        /// What failed.
        reason: String,
        /// When the failure was first measured.
        detected_at: DateTime<Utc>,
    },
    /// The rollout stops for a person to decide.
    Pause {
        /// Why.
        reason: String,
    },
    /// Every phase passed.
    Succeed,
    /// The rollout fails (a phase failed with `on_failure: fail`, approvals were refused, or
    /// there is nothing to roll back to).
    Fail {
        /// The failed phase, if any.
        phase: Option<usize>,
        /// Why.
        reason: String,
    },
}

/// What a gate's checks add up to.
#[derive(Clone, Debug, PartialEq)]
pub enum GateStatus {
    /// Passed.
    Passed,
    /// Failed, with why and when the failure was first seen.
    Failed(String, DateTime<Utc>),
    /// Neither: a person decides.
    Inconclusive(String),
    /// Measure now.
    Due,
    /// Measure at this time.
    NotBefore(DateTime<Utc>),
    /// Waiting for people until this time.
    AwaitingPeople(DateTime<Utc>),
}

/// The next thing to do for a rollout.
pub fn decide(view: &RolloutView, now: DateTime<Utc>, timing: Timing) -> Decision {
    match view.state {
        state if state.is_terminal() => Decision::Idle,
        RolloutState::RollingBack => Decision::Idle,
        RolloutState::Queued => Decision::Transition(Transition::Activate),
        RolloutState::PendingApproval => decide_approval(view, now),
        RolloutState::Paused => decide_paused(view, now, timing),
        RolloutState::InProgress => decide_running(view, now, timing),
        _ => Decision::Idle,
    }
}

fn decide_approval(view: &RolloutView, now: DateTime<Utc>) -> Decision {
    let Some(approval) = &view.approval else {
        return Decision::Transition(Transition::Start);
    };
    if let Some(comment) = &approval.rejection {
        return Decision::Transition(Transition::Fail {
            phase: None,
            reason: format!("rejected: {comment}"),
        });
    }
    if approval.approvals >= approval.required {
        return Decision::Transition(Transition::Start);
    }
    if now >= approval.expires_at {
        return Decision::Transition(Transition::Fail {
            phase: None,
            reason: "approval request expired".to_owned(),
        });
    }
    Decision::SleepUntil(approval.expires_at)
}

/// The phase the rollout is in: the first one that has not succeeded or been skipped.
pub fn current_phase(view: &RolloutView) -> Option<usize> {
    view.phases
        .iter()
        .position(|phase| !matches!(phase.state, PhaseState::Succeeded | PhaseState::Skipped))
}

/// While paused, operations already submitted are still followed to their end (so the record
/// stays true), but nothing new starts: a step whose intent is recorded but which may never have
/// reached the provider waits for the resume (reconciling could submit it).
fn decide_paused(view: &RolloutView, now: DateTime<Utc>, timing: Timing) -> Decision {
    let Some(index) = current_phase(view) else {
        return Decision::Idle;
    };
    let phase = &view.phases[index];
    let mut earliest: Option<DateTime<Utc>> = None;
    for (step_index, step) in phase.steps.iter().enumerate() {
        let Some(step) = step.as_ref().filter(|s| s.state == StepState::Submitted) else {
            continue;
        };
        let spec = &view.plan.phases[index].steps[step_index];
        let due = poll_due(spec, step, timing);
        if due <= now {
            return Decision::Poll {
                phase: index,
                step: step_index,
            };
        }
        earliest = Some(earliest.map_or(due, |e| e.min(due)));
    }
    earliest.map_or(Decision::Idle, Decision::SleepUntil)
}

fn poll_due(spec: &StepSpec, step: &StepView, timing: Timing) -> DateTime<Utc> {
    let submitted = step.submitted_at.unwrap_or(step.created_at);
    match spec {
        StepSpec::Wait { duration } => submitted + duration.to_chrono(),
        _ => step.last_polled_at.unwrap_or(submitted) + timing.poll_interval.to_chrono(),
    }
}

fn decide_running(view: &RolloutView, now: DateTime<Utc>, timing: Timing) -> Decision {
    let Some(index) = current_phase(view) else {
        return Decision::Transition(Transition::Succeed);
    };
    let phase = &view.phases[index];
    let spec = &view.plan.phases[index];
    match phase.state {
        PhaseState::Pending => Decision::Transition(Transition::StartPhase(index)),
        PhaseState::Running => {
            for (step_index, step_spec) in spec.steps.iter().enumerate() {
                let step = phase.steps.get(step_index).and_then(Option::as_ref);
                let Some(step) = step else {
                    return Decision::Submit {
                        phase: index,
                        step: step_index,
                        attempt: 1,
                    };
                };
                match step.state {
                    StepState::Succeeded => continue,
                    StepState::Pending => {
                        // Even past its deadline the provider is asked first: the operation may
                        // exist, and failing it blind could deploy twice on a retry.
                        return Decision::Reconcile {
                            phase: index,
                            step: step_index,
                        };
                    }
                    StepState::Submitted => {
                        let submitted = step.submitted_at.unwrap_or(step.created_at);
                        let is_wait = matches!(step_spec, StepSpec::Wait { .. });
                        if !is_wait && now >= submitted + timing.step_timeout.to_chrono() {
                            return Decision::Transition(Transition::StepTimedOut {
                                phase: index,
                                step: step_index,
                            });
                        }
                        let due = poll_due(step_spec, step, timing);
                        return if due <= now {
                            Decision::Poll {
                                phase: index,
                                step: step_index,
                            }
                        } else {
                            Decision::SleepUntil(due)
                        };
                    }
                    StepState::Failed => {
                        // Strictly later: a retry asked for at the instant an attempt failed
                        // cannot have seen that failure, and retrying on it would resubmit
                        // every attempt that fails within the same instant, without end.
                        let retried = match (phase.retry_requested_at, step.finished_at) {
                            (Some(retry), Some(finished)) => retry > finished,
                            (Some(_), None) => true,
                            _ => false,
                        };
                        if retried {
                            return Decision::Submit {
                                phase: index,
                                step: step_index,
                                attempt: step.attempt + 1,
                            };
                        }
                        let reason = format!(
                            "{} failed: {}",
                            step_spec.describe(),
                            step.error.as_deref().unwrap_or("no reason given")
                        );
                        let detected = step.finished_at.unwrap_or(now);
                        return fail_phase(view, index, spec.on_failure, reason, detected);
                    }
                }
            }
            Decision::Transition(Transition::Verify(index))
        }
        PhaseState::Verifying => decide_gates(view, index, now),
        // A failed or aborted phase with the rollout still in progress: the transition that
        // failed it also moved the rollout on, so nothing is left to do here.
        _ => Decision::Idle,
    }
}

fn fail_phase(
    view: &RolloutView,
    phase: usize,
    on_failure: OnFailure,
    reason: String,
    detected_at: DateTime<Utc>,
) -> Decision {
    let on_failure = if view.kind == RolloutKind::Rollback {
        // A rollback that fails is not rolled back again: a person must look.
        OnFailure::Fail
    } else {
        on_failure
    };
    Decision::Transition(match on_failure {
        OnFailure::Pause => Transition::Pause { reason },
        OnFailure::Fail => Transition::Fail {
            phase: Some(phase),
            reason,
        },
        OnFailure::Rollback if view.can_roll_back => Transition::RollBack {
            phase,
            reason,
            detected_at,
        },
        OnFailure::Rollback => Transition::Fail {
            phase: Some(phase),
            reason: format!("{reason}; there is no known-good release to roll back to"),
        },
    })
}

fn decide_gates(view: &RolloutView, index: usize, now: DateTime<Utc>) -> Decision {
    let phase = &view.phases[index];
    let spec = &view.plan.phases[index];
    let since = match (phase.verifying_at, phase.retry_requested_at) {
        (Some(verifying), Some(retry)) => verifying.max(retry),
        (Some(verifying), None) => verifying,
        (None, _) => now,
    };
    let empty = GateView::default();
    let mut wake: Option<DateTime<Utc>> = None;
    let mut all_passed = true;
    let mut due: Option<usize> = None;
    for (gate_index, gate) in spec.gates.iter().enumerate() {
        let record = phase.gates.get(gate_index).unwrap_or(&empty);
        match gate_status(gate, record, since, now) {
            GateStatus::Passed => {}
            GateStatus::Failed(reason, detected_at) => {
                let reason = format!("gate {} failed: {reason}", gate.describe());
                return fail_phase(view, index, spec.on_failure, reason, detected_at);
            }
            GateStatus::Inconclusive(reason) => {
                return Decision::Transition(Transition::Pause {
                    reason: format!("gate {} is inconclusive: {reason}", gate.describe()),
                });
            }
            GateStatus::Due => {
                all_passed = false;
                due.get_or_insert(gate_index);
            }
            GateStatus::NotBefore(at) | GateStatus::AwaitingPeople(at) => {
                all_passed = false;
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
    }
    if all_passed {
        return Decision::Transition(Transition::PhaseSucceeded(index));
    }
    match (due, wake) {
        (Some(gate), _) => Decision::Check { phase: index, gate },
        (None, Some(at)) => Decision::SleepUntil(at),
        (None, None) => Decision::Idle,
    }
}

/// The status of one gate from its checks taken since `since`.
pub fn gate_status(
    gate: &GateSpec,
    record: &GateView,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> GateStatus {
    let checks: Vec<&CheckView> = record.checks.iter().filter(|c| c.at >= since).collect();
    if checks.iter().any(|check| check.overridden) {
        return GateStatus::Passed;
    }
    let latest_run = |verdict: Verdict| -> Vec<&CheckView> {
        checks
            .iter()
            .rev()
            .take_while(|check| check.verdict == verdict)
            .copied()
            .collect()
    };
    let next_due = |interval: Span, initial_delay: Span| -> GateStatus {
        let at = match checks.last() {
            Some(last) => last.at + interval.to_chrono(),
            None => since + initial_delay.to_chrono(),
        };
        if at <= now {
            GateStatus::Due
        } else {
            GateStatus::NotBefore(at)
        }
    };
    let failed = |run: &[&CheckView]| {
        let first = run.last().map_or(now, |check| check.at);
        let summary = run
            .first()
            .map(|check| check.summary.clone())
            .unwrap_or_default();
        GateStatus::Failed(
            format!("{} consecutive failures, last: {summary}", run.len()),
            first,
        )
    };
    let past_deadline = |deadline: Span| now >= since + deadline.to_chrono();

    match gate {
        GateSpec::Soak { duration } => {
            let until = since + duration.to_chrono();
            if now >= until {
                GateStatus::Passed
            } else {
                GateStatus::NotBefore(until)
            }
        }
        GateSpec::Approval { required, timeout } => {
            if let Some(comment) = &record.rejection {
                return GateStatus::Failed(format!("rejected: {comment}"), now);
            }
            if record.approvals >= *required {
                return GateStatus::Passed;
            }
            let expires = since + timeout.to_chrono();
            if now >= expires {
                return GateStatus::Failed("approval request expired".to_owned(), now);
            }
            GateStatus::AwaitingPeople(expires)
        }
        GateSpec::Health(health) => {
            let passes = latest_run(Verdict::Pass);
            if passes.len() as u32 >= health.successes {
                return GateStatus::Passed;
            }
            let failures = latest_run(Verdict::Fail);
            if failures.len() as u32 >= health.failures {
                return failed(&failures);
            }
            if past_deadline(health.deadline) {
                return GateStatus::Inconclusive(format!(
                    "no verdict within {} ({} checks)",
                    health.deadline,
                    checks.len()
                ));
            }
            next_due(health.interval, health.initial_delay)
        }
        GateSpec::Webhook(webhook) => {
            if checks.last().is_some_and(|c| c.verdict == Verdict::Pass) {
                return GateStatus::Passed;
            }
            let failures = latest_run(Verdict::Fail);
            if failures.len() as u32 >= webhook.failures {
                return failed(&failures);
            }
            next_due(webhook.interval, Span::default())
        }
        GateSpec::Prometheus(metric) => metric_status(metric, &checks, since, now, next_due),
    }
}

/// A metric gate's status (see [`PrometheusGate`] for the rules).
fn metric_status(
    metric: &PrometheusGate,
    checks: &[&CheckView],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    next_due: impl Fn(Span, Span) -> GateStatus,
) -> GateStatus {
    let errors: Vec<&CheckView> = checks
        .iter()
        .rev()
        .take_while(|check| check.reading == Reading::Error)
        .copied()
        .collect();
    if errors.len() as u32 >= metric.consecutive_errors.max(1) {
        let last = errors.first().map_or("", |check| check.summary.as_str());
        return GateStatus::Inconclusive(if errors.len() == 1 {
            last.to_owned()
        } else {
            format!("{} query errors in a row, last: {last}", errors.len())
        });
    }
    if let Some(last) = checks.last() {
        // No data (and checks recorded before readings were), unless taken as a failure.
        let waits = matches!(last.reading, Reading::Error | Reading::TooFewSamples);
        if last.verdict == Verdict::Inconclusive && !waits {
            return GateStatus::Inconclusive(last.summary.clone());
        }
    }
    // Rounds that count: a compared value, or no data taken as a failure.
    let counted: Vec<&CheckView> = checks
        .iter()
        .filter(|check| matches!(check.verdict, Verdict::Pass | Verdict::Fail))
        .copied()
        .collect();
    let failures: Vec<&CheckView> = if metric.failures_apart {
        counted
            .iter()
            .filter(|check| check.verdict == Verdict::Fail)
            .copied()
            .collect()
    } else {
        let mut run: Vec<&CheckView> = counted
            .iter()
            .rev()
            .take_while(|check| check.verdict == Verdict::Fail)
            .copied()
            .collect();
        run.reverse();
        run
    };
    if failures.len() as u32 >= metric.failures {
        let first = failures.first().map_or(now, |check| check.at);
        let last = failures.last().map_or("", |check| check.summary.as_str());
        let rounds = if metric.failures == 1 {
            "1 failed round".to_owned()
        } else {
            format!(
                "{} failed rounds of {} (limit {})",
                failures.len(),
                counted.len(),
                metric.failures
            )
        };
        return GateStatus::Failed(format!("{rounds}, last: {last}"), first);
    }
    match metric.count {
        Some(count) => {
            if counted.len() as u32 >= count {
                return GateStatus::Passed;
            }
        }
        None => {
            let passes: Vec<&CheckView> = counted
                .iter()
                .rev()
                .take_while(|check| check.verdict == Verdict::Pass)
                .copied()
                .collect();
            if let (Some(newest), Some(oldest)) = (passes.first(), passes.last()) {
                if newest.at - oldest.at >= metric.hold.to_chrono() {
                    return GateStatus::Passed;
                }
            }
        }
    }
    if now >= since + metric.deadline.to_chrono() {
        let why = match checks.last() {
            Some(last) if last.reading == Reading::TooFewSamples => {
                format!("not enough traffic: {}", last.summary)
            }
            _ => match metric.count {
                Some(count) => format!("{} of {count} rounds", counted.len()),
                None => format!("{} rounds", counted.len()),
            },
        };
        return GateStatus::Inconclusive(format!("no verdict within {} ({why})", metric.deadline));
    }
    next_due(metric.interval, metric.initial_delay)
}

#[cfg(test)]
mod tests;
