//! Provider kinds, what each platform can do, and which settings each takes. Pure facts, so a
//! config asking a platform for something it cannot do is refused when applied, not mid-rollout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A hosting platform (or the simulated one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Heroku Platform API.
    Heroku,
    /// Vercel REST API.
    Vercel,
    /// Railway public GraphQL API.
    Railway,
    /// Google Cloud Run Admin API v2.
    Cloudrun,
    /// Render API.
    Render,
    /// Any service with deploy and status URLs.
    Http,
    /// In-process platform with latency and failure injection.
    Simulated,
}

/// What a platform supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Can send a share of traffic to a new version.
    pub traffic_split: bool,
    /// Has its own rollback call (else Shipgate redeploys the previous artifact).
    pub native_rollback: bool,
    /// Can set config vars and flags.
    pub config_vars: bool,
    /// Can run one-off jobs.
    pub jobs: bool,
}

/// One problem with a target's settings.
#[derive(Debug, PartialEq, Eq)]
pub struct SettingProblem {
    /// The settings key at fault (empty for the target as a whole).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ProviderKind {
    /// Every kind's name, for error messages.
    pub const NAMES: [&'static str; 7] = [
        "heroku",
        "vercel",
        "railway",
        "cloudrun",
        "render",
        "http",
        "simulated",
    ];

    /// The kind's name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Heroku => "heroku",
            ProviderKind::Vercel => "vercel",
            ProviderKind::Railway => "railway",
            ProviderKind::Cloudrun => "cloudrun",
            ProviderKind::Render => "render",
            ProviderKind::Http => "http",
            ProviderKind::Simulated => "simulated",
        }
    }

    /// What the platform supports.
    pub fn capabilities(self) -> Capabilities {
        let (traffic_split, native_rollback, config_vars, jobs) = match self {
            ProviderKind::Heroku => (false, true, true, true),
            ProviderKind::Vercel => (true, true, true, false),
            ProviderKind::Railway => (false, true, true, false),
            ProviderKind::Cloudrun => (true, true, true, false),
            ProviderKind::Render => (false, true, true, false),
            ProviderKind::Http => (false, false, false, true),
            ProviderKind::Simulated => (true, true, true, true),
        };
        Capabilities {
            traffic_split,
            native_rollback,
            config_vars,
            jobs,
        }
    }

    /// Whether the platform needs an API credential.
    pub fn needs_credential(self) -> bool {
        !matches!(self, ProviderKind::Http | ProviderKind::Simulated)
    }

    /// (required keys, optional keys) of the target settings.
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            ProviderKind::Heroku => (&["app"], &["api_url"]),
            ProviderKind::Vercel => (&["project_id"], &["team_id", "api_url", "production"]),
            ProviderKind::Railway => (
                &["project_id", "environment_id", "service_id"],
                &["api_url"],
            ),
            ProviderKind::Cloudrun => (&["project", "region", "service"], &["api_url"]),
            ProviderKind::Render => (&["service_id"], &["api_url"]),
            ProviderKind::Http => (
                &["deploy_url"],
                &["status_url", "rollback_url", "headers", "job_url"],
            ),
            ProviderKind::Simulated => (
                &[],
                &[
                    "latency",
                    "fail_deploy",
                    "unhealthy",
                    "fail_rollback",
                    "fail_config",
                ],
            ),
        }
    }

    /// Checks a target's settings (everything but `provider`, `credential` and `health`).
    pub fn check_settings(self, settings: &Map<String, Value>) -> Vec<SettingProblem> {
        let (required, optional) = self.keys();
        let mut problems = Vec::new();
        for key in required {
            match settings.get(*key) {
                Some(Value::String(value)) if !value.is_empty() => {}
                Some(_) => problems.push(SettingProblem {
                    key: (*key).to_owned(),
                    message: "must be a non-empty string".to_owned(),
                }),
                None => problems.push(SettingProblem {
                    key: (*key).to_owned(),
                    message: format!("the {self} provider needs `{key}`"),
                }),
            }
        }
        for (key, value) in settings {
            if required.contains(&key.as_str()) {
                continue;
            }
            if !optional.contains(&key.as_str()) {
                let mut known: Vec<&str> = required.iter().chain(optional).copied().collect();
                known.extend(["provider", "credential", "health"]);
                problems.push(SettingProblem {
                    key: key.clone(),
                    message: format!(
                        "unknown setting for the {self} provider; known: {}",
                        known.join(", ")
                    ),
                });
                continue;
            }
            let problem = match (self, key.as_str()) {
                (_, "api_url" | "deploy_url" | "status_url" | "rollback_url" | "job_url") => {
                    match value.as_str() {
                        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                            None
                        }
                        _ => Some("must be an http:// or https:// URL"),
                    }
                }
                (_, "headers") => (!value
                    .as_object()
                    .is_some_and(|headers| headers.values().all(Value::is_string)))
                .then_some("must be a mapping of header names to strings"),
                (_, "latency") => match value.as_str().map(str::parse::<crate::duration::Span>) {
                    Some(Ok(_)) => None,
                    _ => Some("must be a duration such as 500ms or 2s"),
                },
                (_, "production") => (!value.is_boolean()).then_some("must be true or false"),
                _ => (!value.is_string()).then_some("must be a string"),
            };
            if let Some(message) = problem {
                problems.push(SettingProblem {
                    key: key.clone(),
                    message: message.to_owned(),
                });
            }
        }
        problems
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "heroku" => ProviderKind::Heroku,
            "vercel" => ProviderKind::Vercel,
            "railway" => ProviderKind::Railway,
            "cloudrun" => ProviderKind::Cloudrun,
            "render" => ProviderKind::Render,
            "http" => ProviderKind::Http,
            "simulated" => ProviderKind::Simulated,
            other => {
                return Err(format!(
                    "unknown provider `{other}`; known: {}",
                    Self::NAMES.join(", ")
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_name_round_trips() {
        for name in ProviderKind::NAMES {
            assert_eq!(name.parse::<ProviderKind>().unwrap().as_str(), name);
        }
    }

    #[test]
    fn settings_are_checked_per_provider() {
        let settings = json!({"app": "x", "region": "eu"});
        let problems = ProviderKind::Heroku.check_settings(settings.as_object().unwrap());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "region");

        let settings = json!({"latency": "fast"});
        let problems = ProviderKind::Simulated.check_settings(settings.as_object().unwrap());
        assert_eq!(problems[0].key, "latency");

        let settings = json!({"service_id": "srv-1", "api_url": "ftp://x"});
        let problems = ProviderKind::Render.check_settings(settings.as_object().unwrap());
        assert_eq!(problems[0].key, "api_url");
    }
}
