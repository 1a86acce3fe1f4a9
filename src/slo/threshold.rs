//! Threshold expressions, written like k6's: `p95<500ms`, `classify:p99.9<2s`, `error_rate<0.1%`,
//! `throughput>10000rpm`, `cache_hit_rate>95%`.
//!
//! A threshold keeps the unit it was written in so reports show numbers the way the user wrote them;
//! comparisons use canonical units (microseconds, fractions, requests per second).

/// The plan's KPIs, checked when no threshold is given.
pub const DEFAULTS: [&str; 4] = [
    "p95<500ms",
    "error_rate<0.1%",
    "throughput>10000rpm",
    "cache_hit_rate>95%",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ThresholdError {
    #[error("invalid threshold `{expr}`: {reason}")]
    Invalid { expr: String, reason: String },
    /// The file's shape is wrong; the caller names the file.
    #[error("{0}")]
    File(String),
}

/// The percentiles a result file records; asking for any other is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Percentile {
    P50,
    P90,
    P95,
    P99,
    P99_9,
    Max,
}

impl Percentile {
    pub const ALL: [Percentile; 6] = [
        Percentile::P50,
        Percentile::P90,
        Percentile::P95,
        Percentile::P99,
        Percentile::P99_9,
        Percentile::Max,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Percentile::P50 => "p50",
            Percentile::P90 => "p90",
            Percentile::P95 => "p95",
            Percentile::P99 => "p99",
            Percentile::P99_9 => "p99.9",
            Percentile::Max => "max",
        }
    }

    /// The quantile in thousandths (p99.9 → 999); `None` for the maximum, which is observed, not estimated.
    pub fn per_mille(self) -> Option<u64> {
        match self {
            Percentile::P50 => Some(500),
            Percentile::P90 => Some(900),
            Percentile::P95 => Some(950),
            Percentile::P99 => Some(990),
            Percentile::P99_9 => Some(999),
            Percentile::Max => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Latency(Percentile),
    ErrorRate,
    Throughput,
    CacheHitRate,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Latency(p) => p.name(),
            Metric::ErrorRate => "error_rate",
            Metric::Throughput => "throughput",
            Metric::CacheHitRate => "cache_hit_rate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// Whether `measured op limit` holds. Values within a relative 1e-9 of each other are equal, so that
    /// `0.1%` (0.1 / 100 in binary floating point) and 1 error in 1,000 requests meet at the boundary
    /// instead of missing it by a rounding error.
    pub fn holds(self, measured: f64, limit: f64) -> bool {
        let equal = (measured - limit).abs() <= 1e-9 * measured.abs().max(limit.abs());
        match self {
            Op::Lt => measured < limit && !equal,
            Op::Le => measured < limit || equal,
            Op::Gt => measured > limit && !equal,
            Op::Ge => measured > limit || equal,
        }
    }
}

/// The unit a limit was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Micros,
    Millis,
    Seconds,
    Percent,
    Fraction,
    PerSecond,
    PerMinute,
}

impl Unit {
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Micros => "us",
            Unit::Millis => "ms",
            Unit::Seconds => "s",
            Unit::Percent => "%",
            Unit::Fraction => "",
            Unit::PerSecond => "rps",
            Unit::PerMinute => "rpm",
        }
    }

    /// Canonical value per one of this unit (µs, fraction, requests per second).
    fn factor(self) -> f64 {
        match self {
            Unit::Micros | Unit::Fraction | Unit::PerSecond => 1.0,
            Unit::Millis => 1e3,
            Unit::Seconds => 1e6,
            Unit::Percent => 0.01,
            Unit::PerMinute => 1.0 / 60.0,
        }
    }

    pub fn to_canonical(self, value: f64) -> f64 {
        value * self.factor()
    }

    pub fn from_canonical(self, value: f64) -> f64 {
        value / self.factor()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The expression as written, trimmed.
    pub expr: String,
    /// A request type (`classify`) or `None` for the whole run.
    pub scope: Option<String>,
    pub metric: Metric,
    pub op: Op,
    /// In canonical units.
    pub limit: f64,
    pub unit: Unit,
}

impl Threshold {
    pub fn scope_name(&self) -> &str {
        self.scope.as_deref().unwrap_or("overall")
    }

    /// The limit in the unit it was written in.
    pub fn limit_display(&self) -> String {
        format_value(self.unit.from_canonical(self.limit), self.unit)
    }
}

/// `1234.5` in `ms` → `1234.5ms`; whole numbers without a fraction, others to three decimals at most.
pub fn format_value(value: f64, unit: Unit) -> String {
    let rounded = (value * 1000.0).round() / 1000.0;
    format!("{rounded}{}", unit.suffix())
}

pub fn parse(expr: &str) -> Result<Threshold, ThresholdError> {
    let text = expr.trim();
    let invalid = |reason: String| ThresholdError::Invalid {
        expr: text.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("empty expression".into()));
    }
    let op_at = text
        .find(['<', '>'])
        .ok_or_else(|| invalid("no comparison operator (<, <=, >, >=)".into()))?;
    let (left, rest) = text.split_at(op_at);
    let (op, right) = if let Some(r) = rest.strip_prefix("<=") {
        (Op::Le, r)
    } else if let Some(r) = rest.strip_prefix(">=") {
        (Op::Ge, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (Op::Lt, r)
    } else {
        (Op::Gt, &rest[1..])
    };
    if right.starts_with(['<', '>', '=']) {
        return Err(invalid(format!("unknown operator `{}`", &rest[..2])));
    }

    let left = left.trim();
    let (scope, metric_name) = match left.split_once(':') {
        Some((scope, metric)) => {
            let scope = scope.trim();
            if scope.is_empty() {
                return Err(invalid("empty request type before `:`".into()));
            }
            (Some(scope.to_owned()), metric.trim())
        }
        None => (None, left),
    };
    let metric = parse_metric(metric_name).map_err(invalid)?;
    if scope.is_some() && !matches!(metric, Metric::Latency(_)) {
        // The result file records errors, throughput and the cache for the whole run only.
        return Err(invalid(format!(
            "{} cannot be scoped to a request type; only latency percentiles are recorded per type",
            metric.name()
        )));
    }

    let right = right.trim();
    let split = right
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(right.len());
    let (number, unit) = right.split_at(split);
    if number.is_empty() {
        return Err(invalid("no number after the operator".into()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| invalid(format!("`{number}` is not a number")))?;
    let unit = parse_unit(metric, unit.trim()).map_err(invalid)?;
    if unit == Unit::Fraction && value > 1.0 {
        return Err(invalid(format!(
            "{} is a fraction between 0 and 1 (or a percentage with %), not {number}",
            metric.name()
        )));
    }
    if unit == Unit::Percent && value > 100.0 {
        return Err(invalid(format!("{number}% is above 100%")));
    }
    Ok(Threshold {
        expr: text.to_owned(),
        scope,
        metric,
        op,
        limit: unit.to_canonical(value),
        unit,
    })
}

fn parse_metric(name: &str) -> Result<Metric, String> {
    match name {
        "error_rate" => return Ok(Metric::ErrorRate),
        "throughput" => return Ok(Metric::Throughput),
        "cache_hit_rate" => return Ok(Metric::CacheHitRate),
        "" => return Err("no metric before the operator".into()),
        _ => {}
    }
    if let Some(p) = Percentile::ALL.into_iter().find(|p| p.name() == name) {
        return Ok(Metric::Latency(p));
    }
    let known = Percentile::ALL.map(Percentile::name).join(", ");
    if name.starts_with('p') && name[1..].parse::<f64>().is_ok() {
        return Err(format!(
            "percentile {name} is not recorded in result files; use one of {known}"
        ));
    }
    Err(format!(
        "unknown metric `{name}`; use {known}, error_rate, throughput or cache_hit_rate"
    ))
}

fn parse_unit(metric: Metric, unit: &str) -> Result<Unit, String> {
    let (parsed, expected) = match metric {
        Metric::Latency(_) => (
            match unit {
                "us" | "µs" => Some(Unit::Micros),
                "ms" => Some(Unit::Millis),
                "s" => Some(Unit::Seconds),
                _ => None,
            },
            "a latency needs a unit: us, ms or s",
        ),
        Metric::ErrorRate | Metric::CacheHitRate => (
            match unit {
                "%" => Some(Unit::Percent),
                "" => Some(Unit::Fraction),
                _ => None,
            },
            "a rate is a percentage (95%) or a fraction (0.95)",
        ),
        Metric::Throughput => (
            match unit {
                "rps" => Some(Unit::PerSecond),
                "rpm" => Some(Unit::PerMinute),
                _ => None,
            },
            "throughput needs a unit: rps or rpm",
        ),
    };
    parsed.ok_or_else(|| {
        if unit.is_empty() {
            expected.to_owned()
        } else {
            format!("unknown unit `{unit}`; {expected}")
        }
    })
}

/// A thresholds file: a YAML list of expressions, or a map `{slos: [...]}`.
pub fn parse_file(text: &str) -> Result<Vec<Threshold>, ThresholdError> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum File {
        List(Vec<String>),
        Map { slos: Vec<String> },
    }
    let exprs = match serde_yaml::from_str::<File>(text) {
        Ok(File::List(v)) | Ok(File::Map { slos: v }) => v,
        Err(_) => {
            return Err(ThresholdError::File(
                "expected a YAML list of threshold expressions or a map {slos: [...]}".into(),
            ))
        }
    };
    exprs.iter().map(|e| parse(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expression, scope, metric, operator, limit in canonical units, unit.
    type Case = (&'static str, Option<&'static str>, Metric, Op, f64, Unit);

    #[test]
    fn good_expressions() {
        let cases: &[Case] = &[
            (
                "p95<500ms",
                None,
                Metric::Latency(Percentile::P95),
                Op::Lt,
                500_000.0,
                Unit::Millis,
            ),
            (
                "p99.9<2s",
                None,
                Metric::Latency(Percentile::P99_9),
                Op::Lt,
                2_000_000.0,
                Unit::Seconds,
            ),
            (
                "p50<=20ms",
                None,
                Metric::Latency(Percentile::P50),
                Op::Le,
                20_000.0,
                Unit::Millis,
            ),
            (
                "p90 < 750us",
                None,
                Metric::Latency(Percentile::P90),
                Op::Lt,
                750.0,
                Unit::Micros,
            ),
            (
                "max<1.5s",
                None,
                Metric::Latency(Percentile::Max),
                Op::Lt,
                1_500_000.0,
                Unit::Seconds,
            ),
            (
                "classify:p95<200ms",
                Some("classify"),
                Metric::Latency(Percentile::P95),
                Op::Lt,
                200_000.0,
                Unit::Millis,
            ),
            (
                "error_rate<0.1%",
                None,
                Metric::ErrorRate,
                Op::Lt,
                0.001,
                Unit::Percent,
            ),
            (
                "error_rate<=0.02",
                None,
                Metric::ErrorRate,
                Op::Le,
                0.02,
                Unit::Fraction,
            ),
            (
                "throughput>10000rpm",
                None,
                Metric::Throughput,
                Op::Gt,
                10_000.0 / 60.0,
                Unit::PerMinute,
            ),
            (
                "throughput>=200rps",
                None,
                Metric::Throughput,
                Op::Ge,
                200.0,
                Unit::PerSecond,
            ),
            (
                "cache_hit_rate>95%",
                None,
                Metric::CacheHitRate,
                Op::Gt,
                0.95,
                Unit::Percent,
            ),
        ];
        for &(expr, scope, metric, op, limit, unit) in cases {
            let t = parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(t.scope.as_deref(), scope, "{expr}");
            assert_eq!(t.metric, metric, "{expr}");
            assert_eq!(t.op, op, "{expr}");
            assert!(
                (t.limit - limit).abs() < 1e-9 * limit,
                "{expr}: {}",
                t.limit
            );
            assert_eq!(t.unit, unit, "{expr}");
        }
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let cases = [
            ("", "empty expression"),
            ("p95 500ms", "no comparison operator"),
            ("p95=500ms", "no comparison operator"),
            ("p95<<500ms", "unknown operator `<<`"),
            ("p95=<500ms", "unknown metric `p95=`"),
            ("p95<500", "a latency needs a unit"),
            ("p95<500min", "unknown unit `min`"),
            ("p95<ms", "no number after the operator"),
            ("p95<1.2.3ms", "`1.2.3` is not a number"),
            ("p97<500ms", "percentile p97 is not recorded"),
            ("latency<500ms", "unknown metric `latency`"),
            ("<500ms", "no metric before the operator"),
            (":p95<500ms", "empty request type"),
            ("classify:error_rate<1%", "cannot be scoped"),
            ("error_rate<5", "a fraction between 0 and 1"),
            ("cache_hit_rate>120%", "above 100%"),
            ("throughput>100", "throughput needs a unit"),
            ("throughput>100ms", "unknown unit `ms`"),
            ("error_rate<1ms", "unknown unit `ms`"),
        ];
        for (expr, want) in cases {
            let err = parse(expr).expect_err(expr).to_string();
            assert!(err.contains(want), "{expr}: {err}");
            assert!(err.contains(&format!("`{}`", expr.trim())), "{err}");
        }
    }

    #[test]
    fn defaults_parse() {
        for expr in DEFAULTS {
            parse(expr).unwrap();
        }
    }

    #[test]
    fn thresholds_file_is_a_list_or_a_map() {
        let list = parse_file("- p95<500ms\n- error_rate<1%\n").unwrap();
        assert_eq!(list.len(), 2);
        let map = parse_file("slos:\n  - classify:p99<1s\n").unwrap();
        assert_eq!(map[0].scope.as_deref(), Some("classify"));
        assert!(parse_file("p95: 500ms\n").is_err());
        let err = parse_file("- p95<500\n").unwrap_err().to_string();
        assert!(err.contains("`p95<500`"), "{err}");
    }

    #[test]
    fn comparison_boundaries() {
        assert!(!Op::Lt.holds(500_000.0, 500_000.0));
        assert!(Op::Le.holds(500_000.0, 500_000.0));
        assert!(!Op::Gt.holds(0.95, 0.95));
        assert!(Op::Ge.holds(0.95, 0.95));
        // 1 error in 1,000 is exactly 0.1%, despite 0.1 / 100 not being exact in binary.
        let limit = Unit::Percent.to_canonical(0.1);
        assert!(!Op::Lt.holds(1.0 / 1000.0, limit));
        assert!(Op::Le.holds(1.0 / 1000.0, limit));
        assert!(Op::Lt.holds(0.000999, limit));
    }

    #[test]
    fn values_keep_their_unit_for_display() {
        assert_eq!(
            parse("throughput>10000rpm").unwrap().limit_display(),
            "10000rpm"
        );
        assert_eq!(parse("p99.9<2s").unwrap().limit_display(), "2s");
        assert_eq!(format_value(12.34567, Unit::Millis), "12.346ms");
    }
}
