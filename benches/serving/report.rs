//! The run's results: one row per pair, printed as a Markdown table and
//! written as JSON and as an SVG chart of each figure against its target.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtLeast,
    AtMost,
}

/// What a row's `value` must reach.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub bound: Bound,
    pub value: f64,
    /// As the issue writes it: `≥ 0.8×`, `≤ 50 ms`.
    pub text: String,
}

impl Target {
    pub fn at_least(value: f64, text: &str) -> Self {
        Self {
            bound: Bound::AtLeast,
            value,
            text: text.into(),
        }
    }

    pub fn at_most(value: f64, text: &str) -> Self {
        Self {
            bound: Bound::AtMost,
            value,
            text: text.into(),
        }
    }

    /// How far `value` is towards the target: 1 is exactly on it, above 1
    /// better than it, whichever way the bound points.
    fn score(&self, value: f64) -> f64 {
        match self.bound {
            Bound::AtLeast => value / self.value,
            Bound::AtMost => self.value / value,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Met,
    NotMet,
    /// A figure to read beside the others, with no target of its own.
    Info,
    /// What it measures is not in the server yet.
    NotBuilt,
    /// Calls failed: the figure is not to be trusted.
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub what: String,
    /// Per second, in `unit`.
    pub rate: Option<f64>,
    pub unit: String,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The baseline and its figure, in words.
    pub baseline: String,
    /// The figure held against the target (a ratio to the baseline, or an
    /// absolute value such as ms or bytes).
    pub value: Option<f64>,
    pub value_text: String,
    pub target: Option<Target>,
    pub outcome: Outcome,
    pub note: String,
}

impl Row {
    pub fn new(what: &str) -> Self {
        Self {
            what: what.into(),
            rate: None,
            unit: "/s".into(),
            p50_ms: None,
            p99_ms: None,
            baseline: String::new(),
            value: None,
            value_text: String::new(),
            target: None,
            outcome: Outcome::Info,
            note: String::new(),
        }
    }

    pub fn not_built(what: &str, target: Target, why: &str) -> Self {
        Self {
            target: Some(target),
            outcome: Outcome::NotBuilt,
            note: why.into(),
            ..Self::new(what)
        }
    }

    /// Sets the figure and judges it against `target`, unless calls failed.
    pub fn judged(mut self, value: f64, value_text: String, target: Target) -> Self {
        if self.outcome != Outcome::Failed {
            self.outcome = if target.score(value) >= 1.0 {
                Outcome::Met
            } else {
                Outcome::NotMet
            };
        }
        self.value = Some(value);
        self.value_text = value_text;
        self.target = Some(target);
        self
    }
}

/// `58,400`
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && v >= 10.0 => format!("{v:.0} ms"),
        Some(v) if v.is_finite() => format!("{v:.2} ms"),
        _ => String::new(),
    }
}

fn outcome_text(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Met => "**met**",
        Outcome::NotMet => "not met",
        Outcome::Info => "",
        Outcome::NotBuilt => "not built",
        Outcome::Failed => "FAILED",
    }
}

/// The rows as a Markdown table, ready for the README.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| what | rate | p50 | p99 | baseline | ratio / figure | target | met |\n\
         |---|---:|---:|---:|---|---:|---|---|\n",
    );
    for row in rows {
        let rate = row
            .rate
            .map(|r| format!("{} {}", thousands(r), row.unit))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.what,
            rate,
            ms(row.p50_ms),
            ms(row.p99_ms),
            row.baseline,
            row.value_text,
            row.target.as_ref().map(|t| t.text.as_str()).unwrap_or(""),
            outcome_text(row.outcome),
        );
    }
    for row in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = write!(out, "\n- {}: {}", row.what, row.note);
    }
    out
}

pub fn write_json(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    Ok(())
}

/// One bar per row with a target: how far its figure is towards the
/// target, on a log scale from 1/100 to 100 times it, with the target as a
/// line down the middle. Bars right of the line meet their target.
pub fn write_svg(path: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    const LABEL: f64 = 360.0;
    const PLOT: f64 = 480.0;
    const TEXT: f64 = 260.0;
    const ROW: f64 = 30.0;
    const TOP: f64 = 56.0;
    let judged: Vec<&Row> = rows.iter().filter(|r| r.target.is_some()).collect();
    let width = LABEL + PLOT + TEXT;
    let height = TOP + ROW * judged.len() as f64 + 40.0;
    let x_of = |score: f64| LABEL + PLOT * ((score.clamp(0.01, 100.0).log10() + 2.0) / 4.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="40" fill="#555">each figure divided by its target (log scale); bars right of the line meet it</text>"##
    );
    for (score, label) in [
        (0.01, "1/100"),
        (0.1, "1/10"),
        (1.0, "target"),
        (10.0, "10×"),
        (100.0, "100×"),
    ] {
        let x = x_of(score);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{}" stroke-width="{}"/><text x="{x}" y="{}" text-anchor="middle" fill="#555">{label}</text>"##,
            TOP - 6.0,
            height - 30.0,
            if score == 1.0 { "#000" } else { "#ccc" },
            if score == 1.0 { 2 } else { 1 },
            height - 14.0,
        );
    }
    for (i, row) in judged.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let target = row.target.as_ref().expect("filtered");
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL - 8.0,
            y + 18.0,
            escape(&row.what.replace('`', ""))
        );
        let note = match (row.outcome, row.value) {
            (Outcome::NotBuilt, _) | (_, None) => format!("not built (target {})", target.text),
            (_, Some(value)) => {
                let x = x_of(target.score(value));
                let x1 = x_of(1.0);
                let color = match row.outcome {
                    Outcome::Met => "#2a9d48",
                    Outcome::Failed => "#999",
                    _ => "#d1495b",
                };
                let _ = writeln!(
                    svg,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{color}"/>"#,
                    x.min(x1),
                    y + 5.0,
                    (x - x1).abs().max(1.0),
                    ROW - 10.0
                );
                format!("{} (target {})", row.value_text, target.text)
            }
        };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            LABEL + PLOT + 8.0,
            y + 18.0,
            escape(&note)
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)?;
    Ok(())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
