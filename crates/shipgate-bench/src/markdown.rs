//! Writes the measured figures into `docs/BENCHMARKS.md`, between markers, so the prose around
//! them (what each figure means, profiles, explanations of misses) is kept across runs.

use std::path::Path;

use anyhow::Result;

use crate::bench::Report;
use crate::support;

const BEGIN: &str = "<!-- figures: begin (written by shipgate-bench) -->";
const END: &str = "<!-- figures: end -->";

/// The figures section: machine, command, date, and one table row per figure.
pub fn figures(report: &Report, command: &str, started: chrono::DateTime<chrono::Utc>) -> String {
    let mut text = format!(
        "{BEGIN}\n\n- **Machine:** {}\n- **Command:** `{command}`\n- **Date:** {} (UTC)\n\n\
         | # | figure | measured | baseline (same run) | target | |\n|---|---|---|---|---|---|\n",
        support::machine(),
        started.format("%Y-%m-%d %H:%M"),
    );
    for figure in &report.figures {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            figure.scenario,
            figure.name.trim().replace('|', "\\|"),
            figure.value.replace('|', "\\|"),
            figure.baseline.replace('|', "\\|"),
            figure.target.replace('|', "\\|"),
            match figure.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "",
            }
        ));
    }
    for note in &report.notes {
        text.push_str(&format!("\n```text\n{note}\n```\n"));
    }
    text.push_str(&format!("\n{END}"));
    text
}

/// Replaces the figures section of `path` (or creates the file with just that section).
pub fn write(
    path: &Path,
    report: &Report,
    command: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let section = figures(report, command, started);
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if end > begin => format!(
            "{}{section}{}",
            &existing[..begin],
            &existing[end + END.len()..]
        ),
        _ => format!("# Benchmarks\n\n{section}\n"),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}
