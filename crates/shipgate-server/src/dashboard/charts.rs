//! Server-rendered SVG charts: a gate's measurements over time, and bar charts of the
//! delivery metrics. Pure functions from numbers to markup (text is escaped), so pages need
//! no JavaScript and no chart library, and each chart carries a title and a description for
//! screen readers.

use std::fmt::Write as _;

use shipgate_store::rollouts::CheckDetail;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const STRIP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// Escapes text for XML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number short enough for an axis label.
fn short(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 || value == value.trunc() {
        format!("{value:.1}").trim_end_matches(".0").to_owned()
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

fn open(out: &mut String, height: f64, title: &str, description: &str) {
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{}" preserveAspectRatio="xMinYMin meet"><title>{}</title><desc>{}</desc>"#,
        escape(title),
        escape(title),
        escape(description)
    );
}

/// A gate's checks over time: the measured values as a line with each point coloured by its
/// verdict, and a strip of verdicts beneath (gates that measure no value show the strip only).
/// `None` when there is nothing to draw.
pub fn gate_chart(title: &str, checks: &[CheckDetail]) -> Option<String> {
    let first = checks.first()?.checked_at;
    let last = checks.last()?.checked_at;
    let span = (last - first).num_milliseconds().max(1) as f64;
    let x_of = |check: &CheckDetail| {
        let offset = (check.checked_at - first).num_milliseconds() as f64;
        if checks.len() == 1 {
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0
        } else {
            LEFT + offset / span * (WIDTH - LEFT - RIGHT)
        }
    };
    let values: Vec<f64> = checks
        .iter()
        .filter_map(|c| c.value)
        .filter(|v| v.is_finite())
        .collect();
    let passes = checks.iter().filter(|c| c.verdict == "pass").count();
    let fails = checks.iter().filter(|c| c.verdict == "fail").count();
    let description = format!(
        "{} checks from {} to {}: {passes} passed, {fails} failed, {} inconclusive{}",
        checks.len(),
        first.format("%H:%M:%S"),
        last.format("%H:%M:%S"),
        checks.len() - passes - fails,
        match (
            values.iter().cloned().reduce(f64::min),
            values.iter().cloned().reduce(f64::max)
        ) {
            (Some(low), Some(high)) => format!("; values from {} to {}", short(low), short(high)),
            _ => String::new(),
        }
    );
    // Without values only the verdict strip is drawn, so the chart is just that tall.
    let height = if values.is_empty() {
        TOP + STRIP + BOTTOM
    } else {
        HEIGHT
    };
    let mut out = String::new();
    open(&mut out, height, title, &description);
    let plot_bottom = HEIGHT - BOTTOM - STRIP - 4.0;
    if !values.is_empty() {
        let mut low = values.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut high = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if (high - low).abs() < f64::EPSILON {
            low -= 1.0_f64.max(low.abs() * 0.1);
            high += 1.0_f64.max(high.abs() * 0.1);
        }
        let y_of = |value: f64| plot_bottom - (value - low) / (high - low) * (plot_bottom - TOP);
        let _ = write!(
            out,
            r#"<g class="axis"><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}"/><line x1="{LEFT}" y1="{plot_bottom}" x2="{}" y2="{plot_bottom}"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="end">{}</text></g>"#,
            WIDTH - RIGHT,
            LEFT - 4.0,
            TOP + 8.0,
            escape(&short(high)),
            LEFT - 4.0,
            plot_bottom,
            escape(&short(low)),
        );
        let points: Vec<String> = checks
            .iter()
            .filter_map(|c| {
                c.value
                    .filter(|v| v.is_finite())
                    .map(|v| (x_of(c), y_of(v)))
            })
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            out,
            r#"<polyline class="line" points="{}"/>"#,
            points.join(" ")
        );
        for check in checks {
            if let Some(value) = check.value.filter(|v| v.is_finite()) {
                let _ = write!(
                    out,
                    r#"<circle class="verdict-{}" cx="{:.1}" cy="{:.1}" r="3"><title>{} {}: {}</title></circle>"#,
                    escape(&check.verdict),
                    x_of(check),
                    y_of(value),
                    check.checked_at.format("%H:%M:%S"),
                    escape(&check.verdict),
                    escape(&short(value)),
                );
            }
        }
    }
    let strip_top = height - BOTTOM - STRIP;
    let width = ((WIDTH - LEFT - RIGHT) / checks.len() as f64).clamp(2.0, 12.0);
    for check in checks {
        let _ = write!(
            out,
            r#"<rect class="verdict-{}" x="{:.1}" y="{strip_top}" width="{width:.1}" height="{STRIP}"><title>{} {}</title></rect>"#,
            escape(&check.verdict),
            (x_of(check) - width / 2.0).max(LEFT),
            check.checked_at.format("%H:%M:%S"),
            escape(&check.verdict),
        );
    }
    let _ = write!(
        out,
        r#"<g class="axis"><text x="{LEFT}" y="{}">{}</text><text x="{}" y="{}" text-anchor="end">{}</text></g></svg>"#,
        height - 6.0,
        first.format("%H:%M:%S"),
        WIDTH - RIGHT,
        height - 6.0,
        last.format("%H:%M:%S"),
    );
    Some(out)
}

/// A bar chart of one value per labelled bucket (`None`: no data that bucket, drawn as a gap
/// and said so). `format` writes values for labels and the description.
pub fn bars(title: &str, buckets: &[(String, Option<f64>)], format: fn(f64) -> String) -> String {
    let high = buckets
        .iter()
        .filter_map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let description = buckets
        .iter()
        .map(|(label, value)| {
            format!(
                "{label}: {}",
                value.map_or_else(|| "no data".to_owned(), format)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut out = String::new();
    open(&mut out, HEIGHT, title, &description);
    let plot_bottom = HEIGHT - BOTTOM;
    let scale = if high > 0.0 { high } else { 1.0 };
    let slot = (WIDTH - LEFT - RIGHT) / buckets.len().max(1) as f64;
    let _ = write!(
        out,
        r#"<g class="axis"><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{plot_bottom}"/><line x1="{LEFT}" y1="{plot_bottom}" x2="{}" y2="{plot_bottom}"/><text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{plot_bottom}" text-anchor="end">0</text></g>"#,
        WIDTH - RIGHT,
        LEFT - 4.0,
        TOP + 8.0,
        escape(&format(high)),
        LEFT - 4.0,
    );
    let every = (buckets.len() / 8).max(1);
    for (index, (label, value)) in buckets.iter().enumerate() {
        let x = LEFT + index as f64 * slot;
        if let Some(value) = value.filter(|v| v.is_finite()) {
            let height = value / scale * (plot_bottom - TOP);
            let _ = write!(
                out,
                r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{}: {}</title></rect>"#,
                x + slot * 0.15,
                plot_bottom - height,
                slot * 0.7,
                height.max(0.5),
                escape(label),
                escape(&format(value)),
            );
        }
        if index % every == 0 {
            let _ = write!(
                out,
                r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x + slot / 2.0,
                HEIGHT - 6.0,
                escape(label),
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};
    use serde_json::json;

    fn check(seconds: i64, verdict: &str, value: Option<f64>) -> CheckDetail {
        CheckDetail {
            verdict: verdict.into(),
            value,
            detail: json!({}),
            checked_at: Utc::now() + Duration::seconds(seconds),
        }
    }

    #[test]
    fn a_gate_chart_draws_values_and_verdicts_and_says_what_it_shows() {
        let svg = gate_chart(
            "error rate <script>",
            &[
                check(0, "pass", Some(0.001)),
                check(30, "fail", Some(0.2)),
                check(60, "inconclusive", None),
            ],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;script&gt;") && !svg.contains("<script>"));
        assert!(svg.contains("3 checks") && svg.contains("1 passed, 1 failed, 1 inconclusive"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn a_gate_without_values_draws_its_verdict_strip_only() {
        let svg = gate_chart("health", &[check(0, "pass", None)]).unwrap();
        assert!(!svg.contains("<polyline") && svg.contains("verdict-pass"));
        assert!(gate_chart("none", &[]).is_none());
    }

    #[test]
    fn bars_leave_gaps_where_there_is_no_data() {
        let svg = bars(
            "deploys",
            &[
                ("w1".into(), Some(3.0)),
                ("w2".into(), None),
                ("w3".into(), Some(0.0)),
            ],
            |v| format!("{v:.0}"),
        );
        assert_eq!(svg.matches(r#"class="bar""#).count(), 2);
        assert!(svg.contains("w2: no data"));
    }
}
