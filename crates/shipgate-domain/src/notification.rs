//! Notifications: which audit events are announced, how severe each is, and the channels that
//! receive them (routed by environment, event and least severity).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How much an event matters; channels receive events at or above their severity.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Routine progress: a rollout started or succeeded.
    #[default]
    Info,
    /// A person is needed: a rollout paused, an approval is requested.
    Warning,
    /// Something broke: a rollout failed, a rollback started or finished.
    Critical,
}

impl Severity {
    /// Every severity, least first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// The name as written in config documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The rank stored with a channel (0 info, 1 warning, 2 critical).
    pub fn rank(self) -> i16 {
        self as i16
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// An event a channel can be notified of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NotificationEvent {
    /// A rollout began deploying.
    #[serde(rename = "rollout.started")]
    RolloutStarted,
    /// A rollout paused (a person paused it, or a gate asked for one).
    #[serde(rename = "rollout.paused")]
    RolloutPaused,
    /// A rollout finished every phase.
    #[serde(rename = "rollout.succeeded")]
    RolloutSucceeded,
    /// A rollout failed.
    #[serde(rename = "rollout.failed")]
    RolloutFailed,
    /// A rollout waits for approvals before it starts.
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// A rollback began.
    #[serde(rename = "rollback.started")]
    RollbackStarted,
    /// A rollback ended, restoring the previous release or failing to.
    #[serde(rename = "rollback.finished")]
    RollbackFinished,
    /// A freeze window began (the engine's scheduler sees its edges).
    #[serde(rename = "freeze.began")]
    FreezeBegan,
    /// A freeze window ended.
    #[serde(rename = "freeze.ended")]
    FreezeEnded,
}

impl NotificationEvent {
    /// Every event.
    pub const ALL: [NotificationEvent; 9] = [
        NotificationEvent::RolloutStarted,
        NotificationEvent::RolloutPaused,
        NotificationEvent::RolloutSucceeded,
        NotificationEvent::RolloutFailed,
        NotificationEvent::ApprovalRequested,
        NotificationEvent::RollbackStarted,
        NotificationEvent::RollbackFinished,
        NotificationEvent::FreezeBegan,
        NotificationEvent::FreezeEnded,
    ];

    /// The name as written in config documents and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::RolloutStarted => "rollout.started",
            NotificationEvent::RolloutPaused => "rollout.paused",
            NotificationEvent::RolloutSucceeded => "rollout.succeeded",
            NotificationEvent::RolloutFailed => "rollout.failed",
            NotificationEvent::ApprovalRequested => "approval.requested",
            NotificationEvent::RollbackStarted => "rollback.started",
            NotificationEvent::RollbackFinished => "rollback.finished",
            NotificationEvent::FreezeBegan => "freeze.began",
            NotificationEvent::FreezeEnded => "freeze.ended",
        }
    }

    /// Parses a name as written in config documents.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == name)
    }

    /// How severe the event is.
    pub fn severity(self) -> Severity {
        match self {
            NotificationEvent::RolloutStarted
            | NotificationEvent::RolloutSucceeded
            | NotificationEvent::FreezeEnded => Severity::Info,
            NotificationEvent::RolloutPaused
            | NotificationEvent::ApprovalRequested
            | NotificationEvent::FreezeBegan => Severity::Warning,
            NotificationEvent::RolloutFailed
            | NotificationEvent::RollbackStarted
            | NotificationEvent::RollbackFinished => Severity::Critical,
        }
    }

    /// The notification an audit event `action` with `details` stands for, if any. A rollout
    /// that needs no approval starts when it is created (or, if it queued, activated) in
    /// `in_progress`; one that does asks for approval then, and starts when approved
    /// (`rollout.started`); a phase with an approval gate asks when it starts verifying. A
    /// person pausing a rollout records `rollout.pause`.
    pub fn from_action(action: &str, details: &serde_json::Value) -> Option<Self> {
        let state = details.get("state").and_then(serde_json::Value::as_str);
        match (action, state) {
            ("rollout.created" | "rollout.activated", Some("in_progress"))
            | ("rollout.started", _) => Some(NotificationEvent::RolloutStarted),
            ("rollout.created" | "rollout.activated", Some("pending_approval"))
            | ("phase.approval_requested", _) => Some(NotificationEvent::ApprovalRequested),
            ("rollout.paused" | "rollout.pause", _) => Some(NotificationEvent::RolloutPaused),
            ("rollout.succeeded", _) => Some(NotificationEvent::RolloutSucceeded),
            ("rollout.failed", _) => Some(NotificationEvent::RolloutFailed),
            ("rollback.started", _) => Some(NotificationEvent::RollbackStarted),
            ("rollback.restored" | "rollback.failed", _) => {
                Some(NotificationEvent::RollbackFinished)
            }
            ("freeze.began", _) => Some(NotificationEvent::FreezeBegan),
            ("freeze.ended", _) => Some(NotificationEvent::FreezeEnded),
            _ => None,
        }
    }
}

impl fmt::Display for NotificationEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Where a channel delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// A Slack incoming webhook, sent Block Kit.
    Slack,
    /// Any HTTPS endpoint, sent JSON signed with HMAC-SHA256.
    Webhook,
}

impl ChannelKind {
    /// The name stored with the channel.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
        }
    }
}

/// A validated channel; its URL and secret are kept sealed apart from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSpec {
    /// Unique within the app.
    pub name: String,
    /// Slack or generic webhook.
    pub kind: ChannelKind,
    /// Only these environments (empty: all).
    pub environments: Vec<String>,
    /// Only these events (empty: all).
    pub events: Vec<NotificationEvent>,
    /// The least severity delivered.
    pub severity: Severity,
    /// Whether a signing secret is declared (generic webhooks).
    pub signed: bool,
}

impl ChannelSpec {
    /// Whether `event` in `environment` goes to this channel. An app-wide freeze (no
    /// environment) concerns every environment, so every channel of the app routes it.
    pub fn routes(&self, event: NotificationEvent, environment: Option<&str>) -> bool {
        let app_wide = environment.is_none()
            && matches!(
                event,
                NotificationEvent::FreezeBegan | NotificationEvent::FreezeEnded
            );
        event.severity() >= self.severity
            && (self.events.is_empty() || self.events.contains(&event))
            && (self.environments.is_empty()
                || app_wide
                || environment.is_some_and(|name| self.environments.iter().any(|e| e == name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn activation_means_started_or_approval_requested_by_the_state_it_reaches() {
        assert_eq!(
            NotificationEvent::from_action("rollout.activated", &json!({ "state": "in_progress" })),
            Some(NotificationEvent::RolloutStarted)
        );
        assert_eq!(
            NotificationEvent::from_action(
                "rollout.activated",
                &json!({ "state": "pending_approval" })
            ),
            Some(NotificationEvent::ApprovalRequested)
        );
        assert_eq!(
            NotificationEvent::from_action("phase.started", &json!({})),
            None
        );
        assert_eq!(
            NotificationEvent::from_action("phase.approval_requested", &json!({ "required": 2 })),
            Some(NotificationEvent::ApprovalRequested)
        );
    }

    #[test]
    fn a_channel_routes_by_environment_event_and_least_severity() {
        let channel = ChannelSpec {
            name: "ops".into(),
            kind: ChannelKind::Slack,
            environments: vec!["production".into()],
            events: vec![],
            severity: Severity::Warning,
            signed: false,
        };
        assert!(channel.routes(NotificationEvent::RolloutFailed, Some("production")));
        assert!(!channel.routes(NotificationEvent::RolloutFailed, Some("staging")));
        assert!(!channel.routes(NotificationEvent::RolloutSucceeded, Some("production")));
        assert!(channel.routes(NotificationEvent::FreezeBegan, None));
        assert!(!channel.routes(NotificationEvent::FreezeBegan, Some("staging")));
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
    }
}
