//! Unit tests of single decisions, and property tests that drive whole rollouts through a pure
//! model of the engine with random provider and gate outcomes.

use super::*;
use crate::plan::{HealthGate, PhaseSpec};
use proptest::prelude::*;

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
}

fn health_gate() -> GateSpec {
    GateSpec::Health(HealthGate {
        components: vec!["api".into()],
        interval: Span::secs(30),
        timeout: Span::secs(10),
        failures: 3,
        successes: 2,
        initial_delay: Span::default(),
        deadline: Span::secs(600),
    })
}

fn deploy(component: &str) -> StepSpec {
    StepSpec::Deploy {
        component: component.into(),
    }
}

fn plan(phases: Vec<(Vec<StepSpec>, Vec<GateSpec>, OnFailure)>) -> Plan {
    Plan {
        phases: phases
            .into_iter()
            .enumerate()
            .map(|(index, (steps, gates, on_failure))| PhaseSpec {
                name: format!("phase-{index}"),
                steps,
                gates,
                on_failure,
            })
            .collect(),
    }
}

fn view(plan: Plan) -> RolloutView {
    let phases = plan
        .phases
        .iter()
        .map(|phase| PhaseView {
            state: PhaseState::Pending,
            verifying_at: None,
            retry_requested_at: None,
            steps: vec![None; phase.steps.len()],
            gates: vec![GateView::default(); phase.gates.len()],
        })
        .collect();
    RolloutView {
        state: RolloutState::InProgress,
        kind: RolloutKind::Deploy,
        plan,
        phases,
        approval: None,
        can_roll_back: true,
        created_at: at(0),
    }
}

fn step(state: StepState, at_seconds: i64) -> StepView {
    StepView {
        attempt: 1,
        state,
        created_at: at(at_seconds),
        submitted_at: (state != StepState::Pending).then(|| at(at_seconds)),
        last_polled_at: None,
        finished_at: matches!(state, StepState::Succeeded | StepState::Failed)
            .then(|| at(at_seconds)),
        error: (state == StepState::Failed).then(|| "build failed".to_owned()),
    }
}

fn check(verdict: Verdict, at_seconds: i64) -> CheckView {
    CheckView {
        verdict,
        at: at(at_seconds),
        overridden: false,
        summary: format!("{verdict}"),
        reading: Reading::Measured,
    }
}

fn reading(reading: Reading, at_seconds: i64) -> CheckView {
    CheckView {
        reading,
        ..check(Verdict::Inconclusive, at_seconds)
    }
}

/// An error-rate gate: below 1%, a round a minute, the rest as given by `change`.
fn metric_gate(change: impl FnOnce(&mut PrometheusGate)) -> GateSpec {
    let mut gate = PrometheusGate {
        url: "http://prometheus".into(),
        query: "errors".into(),
        below: Some(0.01),
        above: None,
        range: None,
        interval: Span::secs(60),
        hold: Span::default(),
        count: None,
        failures: 1,
        failures_apart: true,
        consecutive_errors: 1,
        samples_query: None,
        min_samples: None,
        initial_delay: Span::default(),
        no_data: crate::plan::NoData::Inconclusive,
        deadline: Span::secs(600),
    };
    change(&mut gate);
    GateSpec::Prometheus(gate)
}

/// A rollout verifying `gate` since 0 with `checks` recorded.
fn verifying(gate: GateSpec, checks: Vec<CheckView>) -> RolloutView {
    let mut rollout = view(plan(vec![(vec![], vec![gate], OnFailure::Rollback)]));
    rollout.phases[0].state = PhaseState::Verifying;
    rollout.phases[0].verifying_at = Some(at(0));
    rollout.phases[0].gates[0].checks = checks;
    rollout
}

#[test]
fn a_fresh_rollout_starts_its_first_phase_then_submits_its_first_step() {
    let mut rollout = view(plan(vec![(
        vec![deploy("api")],
        vec![],
        OnFailure::Rollback,
    )]));
    assert_eq!(
        decide(&rollout, at(0), Timing::default()),
        Decision::Transition(Transition::StartPhase(0))
    );
    rollout.phases[0].state = PhaseState::Running;
    assert_eq!(
        decide(&rollout, at(0), Timing::default()),
        Decision::Submit {
            phase: 0,
            step: 0,
            attempt: 1
        }
    );
}

#[test]
fn a_step_with_intent_but_no_reference_is_reconciled_not_resubmitted() {
    let mut rollout = view(plan(vec![(
        vec![deploy("api")],
        vec![],
        OnFailure::Rollback,
    )]));
    rollout.phases[0].state = PhaseState::Running;
    rollout.phases[0].steps[0] = Some(step(StepState::Pending, 0));
    assert_eq!(
        decide(&rollout, at(100), Timing::default()),
        Decision::Reconcile { phase: 0, step: 0 }
    );
}

#[test]
fn submitted_steps_are_polled_on_the_interval_and_time_out() {
    let mut rollout = view(plan(vec![(vec![deploy("api")], vec![], OnFailure::Fail)]));
    rollout.phases[0].state = PhaseState::Running;
    rollout.phases[0].steps[0] = Some(step(StepState::Submitted, 0));
    let timing = Timing::default();
    assert_eq!(decide(&rollout, at(1), timing), Decision::SleepUntil(at(2)));
    assert_eq!(
        decide(&rollout, at(2), timing),
        Decision::Poll { phase: 0, step: 0 }
    );
    assert_eq!(
        decide(&rollout, at(15 * 60), timing),
        Decision::Transition(Transition::StepTimedOut { phase: 0, step: 0 })
    );
}

#[test]
fn a_failed_step_follows_on_failure() {
    for (on_failure, can_roll_back, expected) in [
        (OnFailure::Pause, true, "pause"),
        (OnFailure::Fail, true, "fail"),
        (OnFailure::Rollback, true, "rollback"),
        (OnFailure::Rollback, false, "fail"),
    ] {
        let mut rollout = view(plan(vec![(vec![deploy("api")], vec![], on_failure)]));
        rollout.can_roll_back = can_roll_back;
        rollout.phases[0].state = PhaseState::Running;
        rollout.phases[0].steps[0] = Some(step(StepState::Failed, 5));
        let got = match decide(&rollout, at(10), Timing::default()) {
            Decision::Transition(Transition::Pause { .. }) => "pause",
            Decision::Transition(Transition::Fail { .. }) => "fail",
            Decision::Transition(Transition::RollBack { detected_at, .. }) => {
                assert_eq!(detected_at, at(5));
                "rollback"
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            got, expected,
            "{on_failure:?} can_roll_back={can_roll_back}"
        );
    }
}

#[test]
fn a_retry_after_a_failed_step_submits_the_next_attempt() {
    let mut rollout = view(plan(vec![(vec![deploy("api")], vec![], OnFailure::Pause)]));
    rollout.state = RolloutState::InProgress;
    rollout.phases[0].state = PhaseState::Running;
    rollout.phases[0].steps[0] = Some(step(StepState::Failed, 5));
    rollout.phases[0].retry_requested_at = Some(at(20));
    assert_eq!(
        decide(&rollout, at(21), Timing::default()),
        Decision::Submit {
            phase: 0,
            step: 0,
            attempt: 2
        }
    );
}

#[test]
fn health_gates_need_consecutive_successes_and_fail_on_consecutive_failures() {
    let mut rollout = view(plan(vec![(
        vec![deploy("api")],
        vec![health_gate()],
        OnFailure::Rollback,
    )]));
    rollout.phases[0].state = PhaseState::Verifying;
    rollout.phases[0].steps[0] = Some(step(StepState::Succeeded, 0));
    rollout.phases[0].verifying_at = Some(at(0));
    assert_eq!(
        decide(&rollout, at(0), Timing::default()),
        Decision::Check { phase: 0, gate: 0 }
    );

    rollout.phases[0].gates[0].checks = vec![check(Verdict::Pass, 0)];
    assert_eq!(
        decide(&rollout, at(10), Timing::default()),
        Decision::SleepUntil(at(30))
    );
    rollout.phases[0].gates[0]
        .checks
        .push(check(Verdict::Pass, 30));
    assert_eq!(
        decide(&rollout, at(30), Timing::default()),
        Decision::Transition(Transition::PhaseSucceeded(0))
    );

    rollout.phases[0].gates[0].checks = vec![
        check(Verdict::Pass, 0),
        check(Verdict::Fail, 30),
        check(Verdict::Fail, 60),
    ];
    assert_eq!(
        decide(&rollout, at(90), Timing::default()),
        Decision::Check { phase: 0, gate: 0 }
    );
    rollout.phases[0].gates[0]
        .checks
        .push(check(Verdict::Fail, 90));
    match decide(&rollout, at(90), Timing::default()) {
        Decision::Transition(Transition::RollBack {
            detected_at,
            reason,
            ..
        }) => {
            assert_eq!(
                detected_at,
                at(30),
                "detected at the first failure of the run"
            );
            assert!(reason.contains("3 consecutive failures"), "{reason}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
}

#[test]
fn checks_before_a_retry_do_not_count() {
    let mut rollout = view(plan(vec![(vec![], vec![health_gate()], OnFailure::Pause)]));
    rollout.phases[0].state = PhaseState::Verifying;
    rollout.phases[0].verifying_at = Some(at(0));
    rollout.phases[0].gates[0].checks = vec![
        check(Verdict::Fail, 0),
        check(Verdict::Fail, 30),
        check(Verdict::Fail, 60),
    ];
    rollout.phases[0].retry_requested_at = Some(at(61));
    assert_eq!(
        decide(&rollout, at(61), Timing::default()),
        Decision::Check { phase: 0, gate: 0 }
    );
}

#[test]
fn an_inconclusive_metric_pauses_and_never_passes() {
    let rollout = verifying(metric_gate(|_| {}), vec![reading(Reading::NoData, 0)]);
    assert!(matches!(
        decide(&rollout, at(1), Timing::default()),
        Decision::Transition(Transition::Pause { .. })
    ));
}

#[test]
fn a_metric_gate_fails_at_its_failure_limit_counting_failures_apart() {
    let gate = || {
        metric_gate(|g| {
            g.failures = 2;
            g.hold = Span::secs(300);
        })
    };
    let one = verifying(
        gate(),
        vec![check(Verdict::Fail, 0), check(Verdict::Pass, 60)],
    );
    assert_eq!(
        decide(&one, at(120), Timing::default()),
        Decision::Check { phase: 0, gate: 0 },
        "one failure of two allowed: measure again"
    );
    let two = verifying(
        gate(),
        vec![
            check(Verdict::Fail, 0),
            check(Verdict::Pass, 60),
            check(Verdict::Fail, 120),
        ],
    );
    assert!(
        matches!(
            decide(&two, at(121), Timing::default()),
            Decision::Transition(Transition::RollBack { ref reason, .. })
                if reason.contains("2 failed rounds of 3 (limit 2)")
        ),
        "{:?}",
        decide(&two, at(121), Timing::default())
    );
}

#[test]
fn a_metric_gate_stored_before_failures_counted_apart_still_counts_them_in_a_row() {
    let gate = metric_gate(|g| {
        g.failures = 2;
        g.failures_apart = false;
        g.hold = Span::secs(300);
    });
    let apart = verifying(
        gate,
        vec![
            check(Verdict::Fail, 0),
            check(Verdict::Pass, 60),
            check(Verdict::Fail, 120),
        ],
    );
    assert_eq!(
        decide(&apart, at(180), Timing::default()),
        Decision::Check { phase: 0, gate: 0 }
    );
}

#[test]
fn a_metric_gate_with_a_count_passes_after_its_last_round() {
    let gate = || {
        metric_gate(|g| {
            g.count = Some(3);
            g.failures = 2;
        })
    };
    let two = verifying(
        gate(),
        vec![check(Verdict::Pass, 0), check(Verdict::Fail, 60)],
    );
    assert_eq!(
        decide(&two, at(120), Timing::default()),
        Decision::Check { phase: 0, gate: 0 }
    );
    let three = verifying(
        gate(),
        vec![
            check(Verdict::Pass, 0),
            check(Verdict::Fail, 60),
            check(Verdict::Pass, 120),
        ],
    );
    assert_eq!(
        decide(&three, at(121), Timing::default()),
        Decision::Transition(Transition::PhaseSucceeded(0))
    );
}

#[test]
fn query_errors_are_retried_up_to_the_consecutive_error_limit() {
    let gate = || {
        metric_gate(|g| {
            g.consecutive_errors = 3;
            g.hold = Span::secs(300);
        })
    };
    let two = verifying(
        gate(),
        vec![
            reading(Reading::Error, 0),
            check(Verdict::Pass, 60),
            reading(Reading::Error, 120),
            reading(Reading::Error, 180),
        ],
    );
    assert_eq!(
        decide(&two, at(240), Timing::default()),
        Decision::Check { phase: 0, gate: 0 },
        "two errors in a row of three allowed: query again"
    );
    let mut three = two.clone();
    three.phases[0].gates[0]
        .checks
        .push(reading(Reading::Error, 240));
    assert!(matches!(
        decide(&three, at(241), Timing::default()),
        Decision::Transition(Transition::Pause { ref reason, .. })
            if reason.contains("3 query errors in a row")
    ));
}

#[test]
fn rounds_with_too_few_samples_count_for_nothing_and_end_inconclusive() {
    let gate = || metric_gate(|g| g.min_samples = Some(100.0));
    let waiting = verifying(
        gate(),
        vec![
            reading(Reading::TooFewSamples, 0),
            reading(Reading::TooFewSamples, 60),
        ],
    );
    assert_eq!(
        decide(&waiting, at(120), Timing::default()),
        Decision::Check { phase: 0, gate: 0 },
        "low traffic neither passes nor pauses before the deadline"
    );
    let mut late = waiting.clone();
    late.phases[0].gates[0].checks = (0..10)
        .map(|n| reading(Reading::TooFewSamples, n * 60))
        .collect();
    assert!(matches!(
        decide(&late, at(600), Timing::default()),
        Decision::Transition(Transition::Pause { ref reason, .. })
            if reason.contains("not enough traffic")
    ));
}

#[test]
fn metric_conditions_read_as_written() {
    let GateSpec::Prometheus(mut gate) = metric_gate(|_| {}) else {
        unreachable!()
    };
    assert!(gate.accepts(0.009) && !gate.accepts(0.01));
    gate.below = None;
    gate.range = Some((1.0, 2.0));
    assert!(gate.accepts(1.0) && gate.accepts(2.0) && !gate.accepts(2.01) && !gate.accepts(0.5));
    gate.above = Some(1.5);
    assert!(!gate.accepts(1.5) && gate.accepts(1.6));
    assert_eq!(gate.condition(), "> 1.5 and in [1, 2]");
}

#[test]
fn approval_gates_wait_for_people_then_pass_or_fail() {
    let gate = GateSpec::Approval {
        required: 2,
        timeout: Span::secs(3600),
    };
    let mut rollout = view(plan(vec![(vec![], vec![gate], OnFailure::Pause)]));
    rollout.phases[0].state = PhaseState::Verifying;
    rollout.phases[0].verifying_at = Some(at(0));
    rollout.phases[0].gates[0].approvals = 1;
    assert_eq!(
        decide(&rollout, at(5), Timing::default()),
        Decision::SleepUntil(at(3600))
    );
    rollout.phases[0].gates[0].approvals = 2;
    assert_eq!(
        decide(&rollout, at(5), Timing::default()),
        Decision::Transition(Transition::PhaseSucceeded(0))
    );
    rollout.phases[0].gates[0].approvals = 0;
    assert!(matches!(
        decide(&rollout, at(3600), Timing::default()),
        Decision::Transition(Transition::Pause { .. })
    ));
}

#[test]
fn a_rollback_rollout_that_fails_is_not_rolled_back_again() {
    let mut rollout = view(plan(vec![(
        vec![StepSpec::Rollback {
            component: "api".into(),
        }],
        vec![],
        OnFailure::Rollback,
    )]));
    rollout.kind = RolloutKind::Rollback;
    rollout.phases[0].state = PhaseState::Running;
    rollout.phases[0].steps[0] = Some(step(StepState::Failed, 0));
    assert!(matches!(
        decide(&rollout, at(1), Timing::default()),
        Decision::Transition(Transition::Fail { .. })
    ));
}

#[test]
fn rollout_level_approvals_start_refuse_or_expire() {
    let mut rollout = view(plan(vec![(
        vec![deploy("api")],
        vec![],
        OnFailure::Rollback,
    )]));
    rollout.state = RolloutState::PendingApproval;
    rollout.approval = Some(ApprovalView {
        required: 1,
        approvals: 0,
        rejection: None,
        expires_at: at(100),
    });
    assert_eq!(
        decide(&rollout, at(1), Timing::default()),
        Decision::SleepUntil(at(100))
    );
    assert!(matches!(
        decide(&rollout, at(100), Timing::default()),
        Decision::Transition(Transition::Fail { .. })
    ));
    rollout.approval.as_mut().unwrap().approvals = 1;
    assert_eq!(
        decide(&rollout, at(1), Timing::default()),
        Decision::Transition(Transition::Start)
    );
}

#[test]
fn paused_rollouts_follow_submitted_steps_but_start_nothing() {
    let mut rollout = view(plan(vec![(
        vec![deploy("api"), deploy("web")],
        vec![],
        OnFailure::Rollback,
    )]));
    rollout.state = RolloutState::Paused;
    rollout.phases[0].state = PhaseState::Running;
    rollout.phases[0].steps[0] = Some(step(StepState::Submitted, 0));
    assert_eq!(
        decide(&rollout, at(5), Timing::default()),
        Decision::Poll { phase: 0, step: 0 }
    );
    rollout.phases[0].steps[0] = Some(step(StepState::Succeeded, 0));
    assert_eq!(decide(&rollout, at(5), Timing::default()), Decision::Idle);
}

// ---------------------------------------------------------------------------------------------
// A pure model of the engine: applies decisions with outcomes drawn by proptest, and checks
// every transition against the state tables.

#[derive(Clone, Debug)]
struct Outcomes {
    /// Drawn in order for every provider answer and every gate measurement.
    draws: Vec<u8>,
}

struct Model {
    rollout: RolloutView,
    now: DateTime<Utc>,
    draws: std::iter::Cycle<std::vec::IntoIter<u8>>,
    transitions: usize,
    resumes: usize,
}

impl Model {
    fn draw(&mut self) -> u8 {
        self.draws.next().unwrap_or(0)
    }

    fn set_rollout(&mut self, next: RolloutState) {
        assert!(
            self.rollout.state.can_become(next),
            "illegal rollout transition {} -> {next}",
            self.rollout.state
        );
        self.rollout.state = next;
    }

    fn set_phase(&mut self, index: usize, next: PhaseState) {
        let phase = &mut self.rollout.phases[index];
        assert!(
            phase.state.can_become(next),
            "illegal phase transition {} -> {next}",
            phase.state
        );
        phase.state = next;
    }

    fn set_step(&mut self, phase: usize, index: usize, next: StepState) {
        let now = self.now;
        let step = self.rollout.phases[phase].steps[index].as_mut().unwrap();
        assert!(
            step.state.can_become(next),
            "illegal step transition {} -> {next}",
            step.state
        );
        step.state = next;
        match next {
            StepState::Submitted => step.submitted_at = Some(now),
            StepState::Succeeded | StepState::Failed => step.finished_at = Some(now),
            StepState::Pending => {}
        }
        if next == StepState::Failed {
            step.error = Some("provider said no".into());
        }
    }

    fn end_phases(&mut self, current: Option<usize>, as_state: PhaseState) {
        for index in 0..self.rollout.phases.len() {
            let state = self.rollout.phases[index].state;
            if Some(index) == current && !state.is_final() && state != PhaseState::Pending {
                self.set_phase(index, as_state);
            } else if state == PhaseState::Pending {
                self.set_phase(index, PhaseState::Skipped);
            }
        }
    }

    /// Applies one decision; returns false once the rollout is over.
    fn step(&mut self) -> bool {
        let decision = decide(&self.rollout, self.now, Timing::default());
        match decision {
            Decision::Transition(transition) => {
                self.transitions += 1;
                match transition {
                    Transition::Activate => self.set_rollout(RolloutState::InProgress),
                    Transition::Start => self.set_rollout(RolloutState::InProgress),
                    Transition::StartPhase(index) => self.set_phase(index, PhaseState::Running),
                    Transition::StepTimedOut { phase, step } => {
                        self.set_step(phase, step, StepState::Failed)
                    }
                    Transition::Verify(index) => {
                        self.set_phase(index, PhaseState::Verifying);
                        self.rollout.phases[index].verifying_at = Some(self.now);
                    }
                    Transition::PhaseSucceeded(index) => {
                        self.set_phase(index, PhaseState::Succeeded)
                    }
                    Transition::RollBack { phase, .. } => {
                        self.set_phase(phase, PhaseState::Failed);
                        self.end_phases(None, PhaseState::Aborted);
                        self.set_rollout(RolloutState::RollingBack);
                        // The rollback rollout is modelled as ending at once, either way.
                        let restored = self.draw() % 5 != 0;
                        self.set_rollout(if restored {
                            RolloutState::RolledBack
                        } else {
                            RolloutState::RollbackFailed
                        });
                    }
                    Transition::Pause { .. } => {
                        self.set_rollout(RolloutState::Paused);
                    }
                    Transition::Succeed => self.set_rollout(RolloutState::Succeeded),
                    Transition::Fail { phase, .. } => {
                        if let Some(index) = phase {
                            let state = self.rollout.phases[index].state;
                            if !state.is_final() {
                                self.set_phase(index, PhaseState::Failed);
                            }
                        }
                        self.end_phases(None, PhaseState::Aborted);
                        self.set_rollout(RolloutState::Failed);
                    }
                }
            }
            Decision::Submit {
                phase,
                step,
                attempt,
            } => {
                self.rollout.phases[phase].steps[step] = Some(StepView {
                    attempt,
                    state: StepState::Pending,
                    created_at: self.now,
                    submitted_at: None,
                    last_polled_at: None,
                    finished_at: None,
                    error: None,
                });
                match self.draw() % 6 {
                    0 => self.set_step(phase, step, StepState::Failed),
                    1 => {} // crashed after recording the intent
                    _ => self.set_step(phase, step, StepState::Submitted),
                }
            }
            Decision::Reconcile { phase, step } => {
                self.set_step(phase, step, StepState::Submitted);
            }
            Decision::Poll { phase, step } => {
                let now = self.now;
                if let Some(view) = self.rollout.phases[phase].steps[step].as_mut() {
                    view.last_polled_at = Some(now);
                }
                let is_wait = matches!(
                    self.rollout.plan.phases[phase].steps[step],
                    StepSpec::Wait { .. }
                );
                match (is_wait, self.draw() % 4) {
                    (true, _) | (false, 0 | 1) => self.set_step(phase, step, StepState::Succeeded),
                    (false, 2) => self.set_step(phase, step, StepState::Failed),
                    _ => {}
                }
            }
            Decision::Check { phase, gate } => {
                let (verdict, reading) = match self.draw() % 10 {
                    0 => (Verdict::Fail, Reading::Measured),
                    1 => (Verdict::Inconclusive, Reading::Measured),
                    2 => (Verdict::Inconclusive, Reading::Error),
                    3 => (Verdict::Inconclusive, Reading::TooFewSamples),
                    4 => (Verdict::Inconclusive, Reading::NoData),
                    _ => (Verdict::Pass, Reading::Measured),
                };
                let now = self.now;
                self.rollout.phases[phase].gates[gate]
                    .checks
                    .push(CheckView {
                        verdict,
                        at: now,
                        overridden: false,
                        summary: verdict.to_string(),
                        reading,
                    });
            }
            Decision::SleepUntil(when) => {
                assert!(when > self.now, "sleeping into the past");
                self.now = when;
            }
            Decision::Idle => {
                if self.rollout.state.is_terminal() {
                    return false;
                }
                // Only people move an idle live rollout: model one deciding.
                self.person_acts();
            }
        }
        if self.rollout.state == RolloutState::Paused {
            self.person_acts_if_nothing_in_flight();
        }
        !self.rollout.state.is_terminal()
    }

    fn person_acts_if_nothing_in_flight(&mut self) {
        if matches!(
            decide(&self.rollout, self.now, Timing::default()),
            Decision::Idle
        ) {
            self.person_acts();
        }
    }

    /// A person resumes (retrying), approves, or gives up; after a few resumes they cancel.
    fn person_acts(&mut self) {
        // People take a moment to act on what they see.
        self.now += chrono::Duration::seconds(1);
        let choice = self.draw() % 4;
        let index = current_phase(&self.rollout);
        // Waiting for approvals in a running phase: approve or reject.
        if self.rollout.state == RolloutState::InProgress {
            let index = index.expect("an idle in-progress rollout is in a phase");
            let gate = self.rollout.plan.phases[index]
                .gates
                .iter()
                .position(|gate| matches!(gate, GateSpec::Approval { .. }))
                .expect("only approval gates wait for people");
            if choice == 0 {
                self.rollout.phases[index].gates[gate].rejection = Some("no".into());
            } else {
                self.rollout.phases[index].gates[gate].approvals += 5;
            }
            return;
        }
        assert_eq!(self.rollout.state, RolloutState::Paused);
        self.resumes += 1;
        if self.resumes > 3 || choice == 0 {
            self.end_phases(index, PhaseState::Aborted);
            self.set_rollout(RolloutState::Cancelled);
        } else {
            self.set_rollout(RolloutState::InProgress);
            if let Some(index) = index {
                self.rollout.phases[index].retry_requested_at = Some(self.now);
            }
        }
    }
}

fn arbitrary_gate() -> impl Strategy<Value = GateSpec> {
    prop_oneof![
        Just(health_gate()),
        (1u64..600).prop_map(|s| GateSpec::Soak {
            duration: Span::secs(s)
        }),
        (1u32..3).prop_map(|required| GateSpec::Approval {
            required,
            timeout: Span::secs(3600)
        }),
        Just(metric_gate(|g| {
            g.hold = Span::secs(120);
            g.failures = 2;
            g.initial_delay = Span::secs(30);
            g.deadline = Span::secs(900);
        })),
        Just(metric_gate(|g| {
            g.count = Some(3);
            g.failures = 2;
            g.consecutive_errors = 2;
            g.min_samples = Some(10.0);
        })),
    ]
}

fn arbitrary_step() -> impl Strategy<Value = StepSpec> {
    prop_oneof![
        Just(deploy("api")),
        Just(deploy("web")),
        (0u8..=100).prop_map(|percent| StepSpec::Traffic {
            component: "api".into(),
            percent
        }),
        (1u64..120).prop_map(|s| StepSpec::Wait {
            duration: Span::secs(s)
        }),
    ]
}

fn arbitrary_plan() -> impl Strategy<Value = Plan> {
    let on_failure = prop_oneof![
        Just(OnFailure::Rollback),
        Just(OnFailure::Pause),
        Just(OnFailure::Fail)
    ];
    prop::collection::vec(
        (
            prop::collection::vec(arbitrary_step(), 0..3),
            prop::collection::vec(arbitrary_gate(), 0..3),
            on_failure,
        ),
        1..5,
    )
    .prop_map(plan)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_outcomes_never_make_an_illegal_transition_and_always_end(
        plan in arbitrary_plan(),
        draws in prop::collection::vec(any::<u8>(), 1..64),
        queued in any::<bool>(),
        can_roll_back in any::<bool>(),
        kind_is_rollback in any::<bool>(),
    ) {
        let mut rollout = view(plan);
        rollout.can_roll_back = can_roll_back;
        if kind_is_rollback {
            rollout.kind = RolloutKind::Rollback;
        }
        if queued {
            rollout.state = RolloutState::Queued;
        }
        let mut model = Model {
            rollout,
            now: at(0),
            draws: Outcomes { draws }.draws.into_iter().cycle(),
            transitions: 0,
            resumes: 0,
        };
        let mut guard = 0;
        while model.step() {
            guard += 1;
            prop_assert!(guard < 20_000, "rollout did not end: {:?}", model.rollout.state);
        }
        prop_assert!(model.rollout.state.is_terminal());
        if model.rollout.state == RolloutState::Succeeded {
            prop_assert!(model.rollout.phases.iter().all(|p| p.state == PhaseState::Succeeded));
        }
        if model.rollout.kind == RolloutKind::Rollback {
            prop_assert!(!matches!(model.rollout.state, RolloutState::RolledBack | RolloutState::RollbackFailed));
        }
        prop_assert!(model.rollout.phases.iter().all(|p| p.state.is_final()));
        prop_assert!(model.transitions > 0);
    }
}
