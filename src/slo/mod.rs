//! The SLO gate: threshold expressions judged against a load-test result, optionally against a baseline,
//! rendered for people (table, Markdown) and machines (JSON, YAML, JUnit). Pure logic; `cli::slo` reads
//! the files and writes the outputs.

pub mod evaluate;
pub mod render;
pub mod result;
pub mod threshold;

pub use evaluate::{compare_with_baseline, evaluate_all, Outcome, Report};
pub use result::LoadTestResult;
pub use threshold::Threshold;

/// `10%` or `0.1` → 0.1: how far a run may move from its baseline.
pub fn parse_tolerance(s: &str) -> Result<f64, ToleranceError> {
    let text = s.trim();
    let (number, divisor) = match text.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (text, 1.0),
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v / divisor),
        _ => Err(ToleranceError(text.to_owned())),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid tolerance `{0}`: expected a percentage (10%) or a fraction (0.1), not negative")]
pub struct ToleranceError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances() {
        assert_eq!(parse_tolerance("10%"), Ok(0.1));
        assert_eq!(parse_tolerance("0.25"), Ok(0.25));
        assert_eq!(parse_tolerance("0%"), Ok(0.0));
        assert!(parse_tolerance("-5%").is_err());
        assert!(parse_tolerance("ten").is_err());
        assert!(parse_tolerance("NaN").is_err());
    }
}
