//! The result for people: a comfy-table on stdout and a self-contained HTML page (no scripts, no
//! external assets, so it can be archived as a CI artifact and opened anywhere).

use crate::markup::xml_escape;
use crate::slo::result::{LoadTestResult, Second, Summary};

/// Errors per request type: the result file keeps only the total, the recorder has them per type.
pub type TypeErrors = std::collections::BTreeMap<String, u64>;

/// One row per request type, then the total.
pub fn latency_rows(r: &LoadTestResult, errors: &TypeErrors) -> Vec<[String; 8]> {
    let secs = r.duration_seconds.max(1e-9);
    let row = |name: &str, s: &Summary, errors: Option<u64>| {
        [
            name.to_owned(),
            s.count.to_string(),
            format!("{:.1}", s.count as f64 / secs),
            ms(s.p50),
            ms(s.p95),
            ms(s.p99),
            ms(s.p99_9),
            errors.map_or_else(|| "-".to_owned(), |e| e.to_string()),
        ]
    };
    let mut rows: Vec<_> = r
        .latency_us
        .by_type
        .iter()
        .map(|(name, s)| row(name, s, errors.get(name).copied()))
        .collect();
    rows.push(row("total", &r.latency_us.overall, Some(r.requests.errors)));
    rows
}

pub const LATENCY_HEADER: [&str; 8] = [
    "request", "count", "rps", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "errors",
];

/// The run's totals as (label, value) pairs.
pub fn totals(r: &LoadTestResult) -> Vec<(&'static str, String)> {
    let total = r.requests.total.max(1) as f64;
    let mut out = vec![
        ("duration", format!("{:.1} s", r.duration_seconds)),
        ("requests", r.requests.total.to_string()),
        (
            "throughput",
            format!(
                "{:.1} rps ({:.0} rpm)",
                r.throughput_rps,
                r.throughput_rps * 60.0
            ),
        ),
        (
            "error rate",
            format!(
                "{:.3}% ({} of {})",
                100.0 * r.requests.errors as f64 / total,
                r.requests.errors,
                r.requests.total
            ),
        ),
        (
            "status codes",
            r.requests
                .by_status
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "cache hit rate",
            match &r.cache {
                Some(c) => format!(
                    "{:.1}% ({} of {} lookups)",
                    100.0 * c.hits as f64 / c.lookups.max(1) as f64,
                    c.hits,
                    c.lookups
                ),
                None => "- (no X-Cache-Status)".to_owned(),
            },
        ),
    ];
    if let Some(svc) = &r.service_time_us {
        out.push((
            "service time",
            format!(
                "p50 {} ms, p95 {} ms, p99 {} ms (from the send; the table counts from when due)",
                ms(svc.overall.p50),
                ms(svc.overall.p95),
                ms(svc.overall.p99)
            ),
        ));
    }
    if let Some(w) = &r.warmup {
        out.push((
            "warm-up (not judged)",
            format!(
                "{} requests, {} failed, p95 {} ms, over {:.1} s outside the window (ramp-up, set-up, tail)",
                w.requests.total,
                w.requests.errors,
                ms(w.latency_us.overall.p95),
                w.duration_seconds
            ),
        ));
    }
    let g = &r.generator;
    out.push((
        "rate",
        match g.requested_rps {
            Some(req) => format!(
                "achieved {:.1} rps of {:.1} requested ({:.0}%)",
                g.achieved_rps,
                req,
                100.0 * g.achieved_rps / req.max(1e-9)
            ),
            None => format!("achieved {:.1} rps (no rate target)", g.achieved_rps),
        },
    ));
    out.push((
        "generator",
        if g.saturated {
            "SATURATED: do not trust these numbers".to_owned()
        } else {
            "ok".to_owned()
        },
    ));
    out
}

/// The same unstyled preset as the other commands' tables (`cli::output::table`).
fn new_table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
        .set_header(header);
    t
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

pub fn table(r: &LoadTestResult, errors: &TypeErrors) -> String {
    let mut t = new_table(LATENCY_HEADER);
    for row in latency_rows(r, errors) {
        t.add_row(row);
    }
    let mut s = new_table(["total", "value"]);
    for (k, v) in totals(r) {
        s.add_row([k.to_owned(), v]);
    }
    format!("{t}\n{s}\n")
}

/// A static HTML page with the same tables; `title` names the target and scenario.
pub fn html(r: &LoadTestResult, errors: &TypeErrors, title: &str, warnings: &[String]) -> String {
    let mut out = String::new();
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    out.push_str(&format!("<title>{}</title>\n", xml_escape(title)));
    out.push_str(
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}\
         th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
         .warn{background:#fff3cd;border:1px solid #e0c36a;padding:.6em 1em}</style>\n</head><body>\n",
    );
    out.push_str(&format!("<h1>{}</h1>\n", xml_escape(title)));
    out.push_str(&format!(
        "<p>Started {} &middot; {:.1} s &middot; kybctl loadtest result schema v{}</p>\n",
        xml_escape(&r.started_at),
        r.duration_seconds,
        r.version
    ));
    for w in warnings {
        out.push_str(&format!(
            "<p class=\"warn\">Warning: {}</p>\n",
            xml_escape(w)
        ));
    }
    out.push_str("<h2>Latency by request type</h2>\n<table><tr>");
    for h in LATENCY_HEADER {
        out.push_str(&format!("<th>{}</th>", xml_escape(h)));
    }
    out.push_str("</tr>\n");
    for row in latency_rows(r, errors) {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{}</td>", xml_escape(&cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n<h2>Totals</h2>\n<table>\n");
    for (k, v) in totals(r) {
        out.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            xml_escape(k),
            xml_escape(&v)
        ));
    }
    out.push_str("</table>\n");
    if !r.timeseries.is_empty() {
        out.push_str("<h2>Per second</h2>\n");
        out.push_str(&chart(r, "requests per second", "#1f77b4", |s| {
            s.requests as f64
        }));
        out.push_str(&chart(r, "p95 response time (ms)", "#d62728", |s| {
            s.p95 / 1000.0
        }));
        out.push_str(&chart(r, "p99 response time (ms)", "#9467bd", |s| {
            s.p99 / 1000.0
        }));
        out.push_str(&chart(r, "failed requests", "#ff7f0e", |s| s.errors as f64));
    }
    out.push_str("<p>Latencies are measured by kybctl in microseconds (HDR histograms, 3 significant digits), from when the schedule said a request was due (from its send in a closed-loop run) to its last body byte. Only the steady window is judged; the shaded seconds of the charts are the ramp-up.</p>\n</body></html>\n");
    out
}

/// One per-second series as an inline SVG line chart (no scripts, no assets); the ramp-up is shaded.
fn chart(r: &LoadTestResult, title: &str, colour: &str, value: impl Fn(&Second) -> f64) -> String {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    const PAD: f64 = 30.0;
    let points: Vec<f64> = r.timeseries.iter().map(&value).collect();
    let max = points.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let step = (W - 2.0 * PAD) / (points.len().max(2) - 1) as f64;
    let y = |v: f64| H - PAD - v / max * (H - 2.0 * PAD);
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", PAD + i as f64 * step, y(*v)))
        .collect();
    let ramp = r.warmup.as_ref().map_or(0.0, |w| {
        (w.duration_seconds.min(points.len() as f64) * step).max(0.0)
    });
    format!(
        "<figure><figcaption>{title} (max {max:.1})</figcaption>\
         <svg width=\"{W}\" height=\"{H}\" role=\"img\">\
         <rect x=\"{PAD}\" y=\"{PAD}\" width=\"{ramp:.1}\" height=\"{}\" fill=\"#eee\"/>\
         <line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"{PAD}\" y=\"{}\" font-size=\"11\">0 s</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{} s</text></svg></figure>\n",
        H - 2.0 * PAD,
        H - PAD,
        W - PAD,
        H - PAD,
        line.join(" "),
        H - 8.0,
        W - PAD,
        H - 8.0,
        points.len().saturating_sub(1),
        title = xml_escape(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::result::{Cache, Generator, Latency, Requests};
    use std::collections::BTreeMap;

    fn result() -> LoadTestResult {
        let s = |count| Summary {
            count,
            p50: 1500.0,
            p90: 2000.0,
            p95: 2500.0,
            p99: 9000.0,
            p99_9: 12000.0,
            max: 20000.0,
        };
        LoadTestResult {
            version: 1,
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_seconds: 10.0,
            requests: Requests {
                total: 1000,
                errors: 5,
                by_status: BTreeMap::from([("200".into(), 995), ("503".into(), 5)]),
            },
            throughput_rps: 100.0,
            cache: Some(Cache {
                hits: 900,
                lookups: 1000,
            }),
            latency_us: Latency {
                overall: s(1000),
                by_type: BTreeMap::from([("classify".into(), s(600))]),
            },
            service_time_us: None,
            warmup: None,
            timeseries: Vec::new(),
            generator: Generator {
                requested_rps: Some(200.0),
                achieved_rps: 100.0,
                saturated: true,
            },
        }
    }

    #[test]
    fn table_and_totals() {
        let r = result();
        let rows = latency_rows(&r, &TypeErrors::from([("classify".into(), 3)]));
        assert_eq!(rows[0][0], "classify");
        assert_eq!(rows[0][2], "60.0");
        assert_eq!(rows[1][3], "1.50");
        assert_eq!(rows[0][7], "3");
        assert_eq!(rows[1][7], "5");
        let t = totals(&r);
        let get = |k: &str| t.iter().find(|(l, _)| *l == k).unwrap().1.clone();
        assert_eq!(get("throughput"), "100.0 rps (6000 rpm)");
        assert_eq!(get("error rate"), "0.500% (5 of 1000)");
        assert_eq!(get("cache hit rate"), "90.0% (900 of 1000 lookups)");
        assert!(get("rate").contains("achieved 100.0 rps of 200.0 requested (50%)"));
        assert!(get("generator").starts_with("SATURATED"));
        assert!(table(&r, &TypeErrors::new()).contains("p99.9 ms"));
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let page = html(
            &result(),
            &TypeErrors::new(),
            "kybctl loadtest <x>",
            &["slow & sad".into()],
        );
        assert!(page.contains("<title>kybctl loadtest &lt;x&gt;</title>"));
        assert!(page.contains("slow &amp; sad"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<svg"), "no series, no chart");
    }

    #[test]
    fn per_second_series_become_inline_charts() {
        let mut r = result();
        r.timeseries = (0..5)
            .map(|i| Second {
                second: i,
                requests: 100 + u64::from(i),
                errors: 0,
                p50: 1000.0,
                p95: 2000.0 * f64::from(i + 1),
                p99: 3000.0,
            })
            .collect();
        let page = html(&r, &TypeErrors::new(), "t", &[]);
        assert_eq!(page.matches("<svg").count(), 4);
        assert!(page.contains("p95 response time (ms) (max 10.0)"), "{page}");
        // One point per second in each line.
        let line = page.split("points=\"").nth(1).unwrap();
        assert_eq!(line.split('"').next().unwrap().split(' ').count(), 5);
        assert!(!page.contains("http://"));
    }
}
