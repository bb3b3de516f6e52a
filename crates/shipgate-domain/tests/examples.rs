//! The app configs in `examples/` (one per runbook in `seeds/`, plus the simulated demo) are
//! documentation people copy from: each must load and validate, and each must still say what
//! its runbook said.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shipgate_domain::config::{load, AppSpec, EnvironmentSpec};
use shipgate_domain::plan::{GateSpec, OnFailure, StepSpec};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every `${VAR}` resolves to `test-VAR`, as if the whole environment were set.
fn lookup(name: &str) -> Option<String> {
    Some(format!("test-{name}"))
}

fn load_example(name: &str) -> AppSpec {
    let path = examples_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    load(&text, &lookup)
        .unwrap_or_else(|error| panic!("{name} does not validate: {error}"))
        .spec
}

fn environment<'a>(spec: &'a AppSpec, name: &str) -> &'a EnvironmentSpec {
    spec.environments
        .iter()
        .find(|environment| environment.name == name)
        .unwrap_or_else(|| panic!("{} has no environment `{name}`", spec.app))
}

#[test]
fn every_example_validates() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "class-chat.yaml",
        "demo.yaml",
        "learnr.yaml",
        "nuggetwise.yaml",
        "rag-chatbot.yaml",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "missing {expected}: {names:?}"
        );
    }
    let mut refused = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(error) = load(&text, &lookup) {
            refused.push(format!("{}: {error}", path.display()));
        }
    }
    assert!(
        refused.is_empty(),
        "examples refused:\n{}",
        refused.join("\n")
    );
}

#[test]
fn every_runbook_example_names_the_seed_it_encodes() {
    for path in example_files() {
        if path.file_name().is_some_and(|name| name == "demo.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let header: String = text
            .lines()
            .take_while(|line| line.starts_with('#') || line.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            header.contains("seeds/"),
            "{} should name its seed runbook in the header comment",
            path.display()
        );
    }
}

#[test]
fn class_chat_runs_four_phases_in_production_ending_with_the_ocr_flag() {
    let spec = load_example("class-chat.yaml");
    let production = environment(&spec, "production");
    let phases = &production.plan.phases;
    assert_eq!(
        phases.len(),
        4,
        "{:?}",
        phases.iter().map(|p| &p.name).collect::<Vec<_>>()
    );

    assert_eq!(
        phases[0].steps,
        vec![
            StepSpec::Deploy {
                component: "python-ai".into()
            },
            StepSpec::Deploy {
                component: "node-api".into()
            },
        ],
        "the Python service deploys before the Node API"
    );
    assert_eq!(phases[0].on_failure, OnFailure::Rollback);

    let ocr = &phases[3];
    assert!(
        ocr.steps.contains(&StepSpec::Config {
            component: "python-ai".into(),
            vars: BTreeMap::from([("ENABLE_OCR".into(), Some("true".into()))]),
        }),
        "{:?}",
        ocr.steps
    );
    assert!(ocr
        .gates
        .iter()
        .any(|gate| matches!(gate, GateSpec::Approval { .. })));
    assert_eq!(ocr.on_failure, OnFailure::Pause);
}

#[test]
fn class_chat_probes_the_backend_every_30s_and_fails_after_three_misses() {
    let spec = load_example("class-chat.yaml");
    let backend = &environment(&spec, "production").plan.phases[0];
    let health = backend
        .gates
        .iter()
        .find_map(|gate| match gate {
            GateSpec::Health(health) => Some(health),
            _ => None,
        })
        .expect("the backend phase has a health gate");
    assert_eq!(health.components, ["python-ai", "node-api"]);
    assert_eq!(health.interval.as_millis(), 30_000);
    assert_eq!(health.timeout.as_millis(), 10_000);
    assert_eq!(health.failures, 3);
}

#[test]
fn rag_chatbot_shifts_canary_traffic_10_then_50_then_100() {
    let spec = load_example("rag-chatbot.yaml");
    let production = environment(&spec, "production");
    let phases = &production.plan.phases;
    assert_eq!(phases.len(), 3);

    let traffic: Vec<u8> = phases
        .iter()
        .flat_map(|phase| &phase.steps)
        .filter_map(|step| match step {
            StepSpec::Traffic { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    assert_eq!(traffic, [10, 50, 100]);

    assert_eq!(
        phases[0].steps.first(),
        Some(&StepSpec::Deploy {
            component: "api".into()
        }),
        "the first phase deploys before it shifts traffic"
    );
    for phase in phases {
        assert_eq!(
            phase.on_failure,
            OnFailure::Rollback,
            "phase {}",
            phase.name
        );
        assert!(
            phase
                .gates
                .iter()
                .any(|gate| matches!(gate, GateSpec::Health(_))),
            "phase {} has a health gate",
            phase.name
        );
    }
}

#[test]
fn rag_chatbot_gates_each_canary_step_on_error_rate_and_p95_latency() {
    let spec = load_example("rag-chatbot.yaml");
    let production = environment(&spec, "production");
    for phase in &production.plan.phases {
        let thresholds: Vec<f64> = phase
            .gates
            .iter()
            .filter_map(|gate| match gate {
                GateSpec::Prometheus(metric) => {
                    assert_eq!(metric.url, "test-PROMETHEUS_URL");
                    metric.below
                }
                _ => None,
            })
            .collect();
        assert_eq!(thresholds, [0.01, 2.0], "phase {}", phase.name);
    }
}

#[test]
fn demo_declares_staging_and_production_on_the_simulated_platform() {
    let spec = load_example("demo.yaml");
    assert_eq!(spec.app, "demo-shop");
    let names: Vec<&str> = spec.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["staging", "production"]);
    for environment in &spec.environments {
        assert_eq!(environment.targets.len(), 3);
        for target in environment.targets.values() {
            assert_eq!(target.provider.as_str(), "simulated");
        }
        assert_eq!(environment.plan.phases.len(), 3);
    }
}

#[test]
fn demo_loads_with_no_environment_variables_set() {
    let text = std::fs::read_to_string(examples_dir().join("demo.yaml")).unwrap();
    let applied = load(&text, &|_| None).expect("the demo references no variables");
    assert!(applied.credentials.is_empty());
}
