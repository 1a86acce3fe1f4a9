//! A report as a terminal table, JSON, YAML, JUnit XML and a Markdown table.
//!
//! JUnit is written by hand: the format needed is one suite of flat test cases, and five escapes are
//! less to trust than a general XML writer dependency.

use comfy_table::{presets::UTF8_FULL, Cell, Color, Table};

use super::evaluate::{Check, Outcome, Report};
use crate::markup::xml_escape;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot render the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot render the report as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The JUnit test suite name CI systems group the checks under.
pub const SUITE: &str = "kybctl-slo";

fn label(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Inconclusive => "INCONCLUSIVE",
    }
}

fn summary_line(r: &Report) -> String {
    format!(
        "SLO check: {} ({} passed, {} failed, {} inconclusive)",
        label(r.outcome),
        r.passed,
        r.failed,
        r.inconclusive
    )
}

pub fn table(report: &Report, color: bool) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL);
    if color {
        // comfy-table drops styling when it cannot see a terminal; the caller has already decided.
        t.enforce_styling();
    } else {
        t.force_no_tty();
    }
    t.set_header([
        "threshold",
        "scope",
        "measured",
        "limit",
        "result",
        "detail",
    ]);
    for c in &report.checks {
        let mut result = Cell::new(label(c.outcome));
        if color {
            result = result.fg(match c.outcome {
                Outcome::Pass => Color::Green,
                Outcome::Fail => Color::Red,
                Outcome::Inconclusive => Color::Yellow,
            });
        }
        t.add_row(vec![
            Cell::new(&c.name),
            Cell::new(&c.scope),
            Cell::new(c.measured_display()),
            Cell::new(c.limit_display()),
            result,
            Cell::new(&c.detail),
        ]);
    }
    format!("{t}\n{}\n", summary_line(report))
}

pub fn json(report: &Report) -> Result<String, RenderError> {
    Ok(serde_json::to_string_pretty(report)? + "\n")
}

pub fn yaml(report: &Report) -> Result<String, RenderError> {
    Ok(serde_yaml::to_string(report)?)
}

/// A GitHub-flavoured Markdown table, for a CI job summary.
pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "### {}\n\n| threshold | scope | measured | limit | result | detail |\n|---|---|---|---|---|---|\n",
        summary_line(report)
    );
    for c in &report.checks {
        let icon = match c.outcome {
            Outcome::Pass => "✅",
            Outcome::Fail => "❌",
            Outcome::Inconclusive => "⚠️",
        };
        let cells = [
            c.name.clone(),
            c.scope.clone(),
            c.measured_display(),
            c.limit_display(),
            format!("{icon} {}", label(c.outcome).to_lowercase()),
            c.detail.clone(),
        ];
        out.push('|');
        for cell in cells {
            out.push(' ');
            out.push_str(&markdown_cell(&cell));
            out.push_str(" |");
        }
        out.push('\n');
    }
    out
}

/// `|` would end the cell and `<` could open HTML; a newline would end the row.
fn markdown_cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace(['\n', '\r'], " ")
}

/// One `testsuite` with a `testcase` per check: `<failure>` on fail, `<skipped>` on inconclusive.
pub fn junit(report: &Report) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n  <testsuite name=\"{SUITE}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\">\n",
        report.checks.len(),
        report.failed,
        report.inconclusive
    );
    for c in &report.checks {
        let case = format!(
            "    <testcase classname=\"{SUITE}.{}\" name=\"{}\"",
            xml_escape(&c.scope),
            xml_escape(&c.name)
        );
        out.push_str(&case);
        match c.outcome {
            Outcome::Pass => out.push_str("/>\n"),
            Outcome::Fail | Outcome::Inconclusive => {
                let element = if c.outcome == Outcome::Fail {
                    "failure"
                } else {
                    "skipped"
                };
                out.push_str(&format!(
                    ">\n      <{element} message=\"{}\"/>\n    </testcase>\n",
                    xml_escape(&junit_message(c))
                ));
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn junit_message(c: &Check) -> String {
    format!(
        "measured {}, limit {}: {}",
        c.measured_display(),
        c.limit_display(),
        c.detail
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::evaluate::{evaluate_all, tests::result};
    use crate::slo::threshold::parse;

    fn report(exprs: &[&str]) -> Report {
        let ts: Vec<_> = exprs.iter().map(|e| parse(e).unwrap()).collect();
        Report::new(evaluate_all(&ts, &result(100.0), 100))
    }

    #[test]
    fn junit_has_a_case_per_check_and_escapes_names() {
        let r = report(&["p95<1s", "p95<=50ms", "a&b:p95<1s"]);
        let xml = junit(&r);
        assert_eq!(xml.matches("<testcase ").count(), 3);
        assert!(
            xml.contains(r#"tests="3" failures="1" errors="0" skipped="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase classname="kybctl-slo.overall" name="p95&lt;1s"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<failure message="measured 100ms, limit &lt;=50ms: p95 is 100ms, expected &lt;=50ms"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"classname="kybctl-slo.a&amp;b" name="a&amp;b:p95&lt;1s">"#),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<skipped message=\"measured -, limit &lt;1s: no `a&amp;b` requests recorded\"/>"
            ),
            "{xml}"
        );
    }

    #[test]
    fn markdown_escapes_cells() {
        assert_eq!(markdown_cell("a|b<c\nd"), "a\\|b&lt;c d");
        let md = markdown(&report(&["p95<1000ms"]));
        assert!(
            md.contains("| p95&lt;1000ms | overall | 100ms | &lt;1000ms | ✅ pass |  |"),
            "{md}"
        );
        assert!(
            md.starts_with("### SLO check: PASS (1 passed, 0 failed, 0 inconclusive)"),
            "{md}"
        );
    }

    #[test]
    fn json_fields_are_stable() {
        let v: serde_json::Value =
            serde_json::from_str(&json(&report(&["cache_hit_rate>95%"])).unwrap()).unwrap();
        assert_eq!(v["outcome"], "pass");
        let c = &v["checks"][0];
        assert_eq!(c["name"], "cache_hit_rate>95%");
        assert_eq!(c["kind"], "threshold");
        assert_eq!(c["scope"], "overall");
        assert_eq!(c["metric"], "cache_hit_rate");
        assert_eq!(c["unit"], "%");
        assert_eq!(c["op"], ">");
        assert_eq!(c["measured"], 96.0);
        assert_eq!(c["limit"], 95.0);
        assert_eq!(c["outcome"], "pass");
        assert!(yaml(&report(&["p95<1s"]))
            .unwrap()
            .contains("outcome: pass"));
    }

    #[test]
    fn plain_table_has_no_escape_codes() {
        let t = table(&report(&["p95<1000ms"]), false);
        assert!(!t.contains('\u{1b}'), "{t}");
        assert!(t.contains("PASS") && t.contains("100ms"), "{t}");
        assert!(table(&report(&["p95<1s"]), true).contains('\u{1b}'));
    }
}
