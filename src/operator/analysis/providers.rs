//! The providers that take a measurement: a Prometheus instant query and an HTTP GET of JSON. Thin I/O:
//! each returns an [`Observation`] and the query or URL as sent, and never panics on what it reads.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::assess::Observation;
use super::crd::{Arg, PrometheusProvider, WebProvider};

/// How long a Prometheus query may take before it counts as an error.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `{{args.NAME}}` replaced by each argument's value.
pub fn substitute(template: &str, args: &[Arg]) -> String {
    let mut out = template.to_owned();
    for a in args {
        if let Some(v) = &a.value {
            out = out.replace(&format!("{{{{args.{}}}}}", a.name), v);
        }
    }
    out
}

/// The single number in a Prometheus `/api/v1/query` answer: a scalar, or a vector of exactly one
/// sample. `Ok(None)`: an empty vector.
pub fn prometheus_value(body: &Value) -> Result<Option<f64>, String> {
    if body["status"] != "success" {
        return Err(format!(
            "Prometheus: {} {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let data = &body["data"];
    let number = |v: &Value| -> Result<f64, String> {
        v.get(1)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("Prometheus: no value in {v}"))?
            .parse::<f64>()
            .map_err(|e| format!("Prometheus: {e}"))
    };
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"]).map(Some),
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([]) | None => Ok(None),
            Some([one]) => number(&one["value"]).map(Some),
            Some(many) => Err(format!(
                "Prometheus: the query returned {} series; aggregate it to one (sum, max ...)",
                many.len()
            )),
        },
        other => Err(format!("Prometheus: result type {other:?} is not a number")),
    }
}

async fn instant_query(
    http: &reqwest::Client,
    address: &str,
    query: &str,
) -> Result<Option<f64>, String> {
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .query(&[("query", query)])
        .timeout(QUERY_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("Prometheus at {address}: {e}"))?;
    let body: Value = resp
        .json()
        .await
        .map_err(|e| format!("Prometheus at {address}: {e}"))?;
    prometheus_value(&body)
}

/// Runs the query (and the sample-count query, if any). Returns the query as sent and what it gave.
pub async fn prometheus(
    http: &reqwest::Client,
    p: &PrometheusProvider,
    args: &[Arg],
) -> (String, Observation) {
    let query = substitute(&p.query, args);
    let address = substitute(&p.address, args);
    let value = match instant_query(http, &address, &query).await {
        Err(e) => return (query, Observation::Error(e)),
        Ok(None) => return (query, Observation::Empty),
        Ok(Some(v)) => v,
    };
    let samples = match &p.samples_query {
        None => None,
        Some(sq) => match instant_query(http, &address, &substitute(sq, args)).await {
            Err(e) => return (query, Observation::Error(e)),
            // No series behind the count: no samples.
            Ok(None) => Some(0),
            Ok(Some(n)) if n.is_finite() => Some(n as i64),
            Ok(Some(_)) => Some(0),
        },
    };
    (query, Observation::Value { value, samples })
}

/// A GET of `url` with headers (values already resolved from Secrets by the caller, never recorded);
/// the value and the sample count are read by JSON pointer.
pub async fn web(
    http: &reqwest::Client,
    w: &WebProvider,
    args: &[Arg],
    headers: &BTreeMap<String, String>,
) -> (String, Observation) {
    let url = substitute(&w.url, args);
    let mut req = http
        .get(&url)
        .timeout(Duration::from_secs(w.timeout_seconds.max(1) as u64));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let body: Result<Value, String> = async {
        let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        resp.json().await.map_err(|e| format!("GET {url}: {e}"))
    }
    .await;
    let body = match body {
        Ok(b) => b,
        Err(e) => return (url, Observation::Error(e)),
    };
    (url, web_value(&body, w))
}

/// The value at `jsonPath` (a number, or a string holding one; null or absent is no data).
pub fn web_value(body: &Value, w: &WebProvider) -> Observation {
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let value = match body.pointer(&w.json_path) {
        None | Some(Value::Null) => return Observation::Empty,
        Some(v) => match number(v) {
            Some(n) => n,
            None => return Observation::Error(format!("{} is {v}, not a number", w.json_path)),
        },
    };
    let samples = w
        .samples_path
        .as_deref()
        .map(|p| body.pointer(p).and_then(number).map_or(0, |n| n as i64));
    Observation::Value { value, samples }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_are_substituted() {
        let args = [Arg {
            name: "service-name".into(),
            value: Some("kyb-canary".into()),
        }];
        assert_eq!(
            substitute(
                r#"sum(rate(x{service="{{args.service-name}}"}[1m]))"#,
                &args
            ),
            r#"sum(rate(x{service="kyb-canary"}[1m]))"#
        );
    }

    #[test]
    fn prometheus_answers_are_read_strictly() {
        let vector = |result: Value| json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        assert_eq!(
            prometheus_value(&vector(json!([{"metric": {}, "value": [1.0, "0.25"]}]))),
            Ok(Some(0.25))
        );
        assert_eq!(prometheus_value(&vector(json!([]))), Ok(None));
        assert!(prometheus_value(&vector(json!([{"value": [1, "NaN"]}])))
            .unwrap()
            .unwrap()
            .is_nan());
        assert!(
            prometheus_value(&vector(json!([{"value": [1, "1"]}, {"value": [1, "2"]}])))
                .unwrap_err()
                .contains("2 series")
        );
        assert_eq!(
            prometheus_value(
                &json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}})
            ),
            Ok(Some(3.0))
        );
        assert!(prometheus_value(
            &json!({"status": "error", "errorType": "bad_data", "error": "parse error"})
        )
        .unwrap_err()
        .contains("parse error"));
        assert!(prometheus_value(&json!("garbage")).is_err());
    }

    #[test]
    fn web_answers_are_read_by_pointer() {
        let w = WebProvider {
            url: "http://x".into(),
            json_path: "/data/errorRate".into(),
            samples_path: Some("/data/requests".into()),
            headers: vec![],
            timeout_seconds: 5,
        };
        assert_eq!(
            web_value(&json!({"data": {"errorRate": 0.5, "requests": 40}}), &w),
            Observation::Value {
                value: 0.5,
                samples: Some(40)
            }
        );
        assert_eq!(
            web_value(&json!({"data": {"errorRate": "0.5"}}), &w),
            Observation::Value {
                value: 0.5,
                samples: Some(0)
            }
        );
        assert_eq!(web_value(&json!({"data": {}}), &w), Observation::Empty);
        assert!(matches!(
            web_value(&json!({"data": {"errorRate": [1]}}), &w),
            Observation::Error(_)
        ));
    }
}
