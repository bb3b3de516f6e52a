//! The states of rollouts, phases, steps and gate checks, and which transitions are legal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(
    /// Where a rollout is in its life.
    RolloutState {
        /// Waiting behind another rollout of the same environment.
        Queued => "queued",
        /// Waiting for the approvals the environment requires.
        PendingApproval => "pending_approval",
        /// Running phases.
        InProgress => "in_progress",
        /// Stopped by a person or an inconclusive/failed gate; a person decides.
        Paused => "paused",
        /// Every phase passed.
        Succeeded => "succeeded",
        /// Failed and left as it was.
        Failed => "failed",
        /// Stopped by a person.
        Cancelled => "cancelled",
        /// Replaced in the queue by a newer rollout.
        Superseded => "superseded",
        /// A rollback rollout is undoing it.
        RollingBack => "rolling_back",
        /// Undone: the environment is back on the previous release.
        RolledBack => "rolled_back",
        /// The rollback itself failed: a person must act.
        RollbackFailed => "rollback_failed",
    }
);

string_enum!(
    /// Why a rollout exists.
    RolloutKind {
        /// A release into an environment.
        Deploy => "deploy",
        /// A release that succeeded in the environment before this one.
        Promote => "promote",
        /// Back to a known-good release.
        Rollback => "rollback",
        /// Config or flags only.
        Config => "config",
    }
);

string_enum!(
    /// Where a phase is.
    PhaseState {
        /// Not started.
        Pending => "pending",
        /// Running its steps.
        Running => "running",
        /// Steps done; gates being evaluated.
        Verifying => "verifying",
        /// Steps and gates passed.
        Succeeded => "succeeded",
        /// A step or gate failed.
        Failed => "failed",
        /// Never ran (the rollout ended first).
        Skipped => "skipped",
        /// Stopped while running (cancelled or rolled back).
        Aborted => "aborted",
    }
);

string_enum!(
    /// Where one attempt of one step is.
    StepState {
        /// Intent recorded; the provider may or may not have been called.
        Pending => "pending",
        /// The provider accepted it and its reference is stored.
        Submitted => "submitted",
        /// The provider reports it done.
        Succeeded => "succeeded",
        /// The provider reports it failed, or it timed out.
        Failed => "failed",
    }
);

string_enum!(
    /// The outcome of one gate measurement.
    Verdict {
        /// Healthy / within thresholds / approved.
        Pass => "pass",
        /// Unhealthy / outside thresholds / rejected.
        Fail => "fail",
        /// No data, NaN, or neither condition met: a person decides.
        Inconclusive => "inconclusive",
    }
);

impl RolloutState {
    /// No further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded
                | RolloutState::Failed
                | RolloutState::Cancelled
                | RolloutState::Superseded
                | RolloutState::RolledBack
                | RolloutState::RollbackFailed
        )
    }

    /// Holds the environment: at most one rollout per environment is in one of these.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::PendingApproval | RolloutState::InProgress | RolloutState::Paused
        )
    }

    /// Whether `self → next` is a legal transition.
    pub fn can_become(self, next: RolloutState) -> bool {
        use RolloutState::*;
        matches!(
            (self, next),
            (
                Queued,
                PendingApproval | InProgress | Cancelled | Superseded
            ) | (PendingApproval, InProgress | Cancelled | Failed)
                | (
                    InProgress,
                    Paused | Succeeded | Failed | Cancelled | RollingBack
                )
                | (Paused, InProgress | Cancelled | Failed | RollingBack)
                | (RollingBack, RolledBack | RollbackFailed)
        )
    }
}

impl PhaseState {
    /// The phase will not run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PhaseState::Succeeded | PhaseState::Failed | PhaseState::Skipped | PhaseState::Aborted
        )
    }

    /// Whether `self → next` is a legal transition.
    pub fn can_become(self, next: PhaseState) -> bool {
        use PhaseState::*;
        matches!(
            (self, next),
            (Pending, Running | Skipped | Aborted)
                | (Running, Verifying | Failed | Aborted)
                | (Verifying, Succeeded | Failed | Aborted)
        )
    }
}

impl StepState {
    /// Whether `self → next` is a legal transition.
    pub fn can_become(self, next: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, next),
            (Pending, Submitted | Failed | Succeeded) | (Submitted, Succeeded | Failed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_rollouts_never_move_again() {
        for &from in RolloutState::ALL.iter().filter(|s| s.is_terminal()) {
            for &to in RolloutState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn every_non_terminal_rollout_state_has_a_way_out() {
        for &from in RolloutState::ALL.iter().filter(|s| !s.is_terminal()) {
            assert!(
                RolloutState::ALL
                    .iter()
                    .any(|&to| to.is_terminal() && from.can_become(to)),
                "{from} cannot end"
            );
        }
    }

    #[test]
    fn the_rollout_transition_table_is_exactly_the_designed_one() {
        let legal: Vec<(RolloutState, RolloutState)> = RolloutState::ALL
            .iter()
            .flat_map(|&from| RolloutState::ALL.iter().map(move |&to| (from, to)))
            .filter(|(from, to)| from.can_become(*to))
            .collect();
        let shown: Vec<String> = legal.iter().map(|(a, b)| format!("{a}->{b}")).collect();
        assert_eq!(
            shown.join(" "),
            "queued->pending_approval queued->in_progress queued->cancelled queued->superseded \
             pending_approval->in_progress pending_approval->failed pending_approval->cancelled \
             in_progress->paused in_progress->succeeded in_progress->failed in_progress->cancelled in_progress->rolling_back \
             paused->in_progress paused->failed paused->cancelled paused->rolling_back \
             rolling_back->rolled_back rolling_back->rollback_failed"
        );
    }

    #[test]
    fn names_round_trip() {
        for state in RolloutState::ALL {
            assert_eq!(state.as_str().parse::<RolloutState>().unwrap(), *state);
        }
        for state in PhaseState::ALL {
            assert_eq!(state.as_str().parse::<PhaseState>().unwrap(), *state);
        }
        assert!("running".parse::<RolloutState>().is_err());
    }

    #[test]
    fn active_states_are_the_ones_that_hold_an_environment() {
        let active: Vec<&str> = RolloutState::ALL
            .iter()
            .filter(|s| s.is_active())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(active, ["pending_approval", "in_progress", "paused"]);
    }
}
