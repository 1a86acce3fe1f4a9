//! Whether a live child still holds what the operator applied: every field of the desired object must
//! have the same value in the live one. Fields the operator does not set (status, defaults the
//! apiserver fills in, annotations of other tools) are not compared, so a no-op resync finds no drift
//! and writes nothing, while a `kubectl edit` of an owned field is found and undone.
//!
//! Pure, over JSON: the same comparison serves every kind of child.

use serde_json::Value;

/// The first path (`spec.template.spec.containers[0].image`) where `live` differs from `desired`, or
/// `None` when it holds every desired value.
pub fn drift(desired: &Value, live: &Value) -> Option<String> {
    diff(desired, live, &mut String::new())
}

fn diff(desired: &Value, live: &Value, path: &mut String) -> Option<String> {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, w) in want {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = match have.get(key) {
                    Some(h) => diff(w, h, path),
                    None if is_empty(w) => None,
                    None => Some(path.clone()),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        // Lists the operator sets are owned whole (containers, ports, volumes): same length, and each
        // element holds its desired fields.
        (Value::Array(want), Value::Array(have)) => {
            if want.len() != have.len() {
                return Some(path.clone());
            }
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = diff(w, h, path);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (w, h) if same_scalar(w, h) => None,
        (w, Value::Null) if is_empty(w) => None,
        _ => Some(path.clone()),
    }
}

/// A zero value: null, an empty map or list, `false`, `0` or `""`. The apiserver drops these from
/// `omitempty` fields (`readOnly: false` on a volume mount comes back absent), so their absence is no
/// drift.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
    }
}

fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => {
            // The apiserver writes quantities back in canonical form ("0.5" becomes "500m").
            x == y || matches!((quantity(x), quantity(y)), (Some(p), Some(q)) if p == q)
        }
        _ => a == b,
    }
}

/// A Kubernetes quantity ("250m", "1.5", "512Mi", "1e3") in its base unit. Hand-written because
/// k8s-openapi's `Quantity` is only a string wrapper and no kept crate parses quantities; only needed
/// to tell a canonicalised quantity from a changed one.
fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let s = s.trim();
    if s.is_empty()
        || !s.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
    {
        return None;
    }
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = s.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extra_live_fields_and_dropped_empties_are_not_drift() {
        let desired = json!({
            "metadata": {"labels": {"a": "1"}, "annotations": {}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "api", "image": "x:1", "env": [],
                     "volumeMounts": [{"name": "tmp", "mountPath": "/tmp", "readOnly": false}]}]}}}
        });
        let live = json!({
            "metadata": {"labels": {"a": "1", "other-tool": "y"}, "uid": "u", "resourceVersion": "9"},
            "spec": {"replicas": 3, "progressDeadlineSeconds": 600,
                     "template": {"spec": {"containers": [{"name": "api", "image": "x:1", "terminationMessagePath": "/dev/termination-log",
                                                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}]}}},
            "status": {"readyReplicas": 3}
        });
        assert_eq!(drift(&desired, &live), None);
    }

    #[test]
    fn an_edited_owned_field_is_drift_with_its_path() {
        let desired = json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": "x:1"}]}}}});
        let live = json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": "x:2"}]}}}});
        assert_eq!(
            drift(&desired, &live).as_deref(),
            Some("spec.template.spec.containers[0].image")
        );
        let live = json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": "x:1"}, {"name": "sidecar"}]}}}});
        assert_eq!(
            drift(&desired, &live).as_deref(),
            Some("spec.template.spec.containers")
        );
        assert_eq!(
            drift(
                &json!({"metadata": {"labels": {"a": "1"}}}),
                &json!({"metadata": {}})
            )
            .as_deref(),
            Some("metadata.labels")
        );
        assert_eq!(
            drift(
                &json!({"spec": {"replicas": 3}}),
                &json!({"spec": {"replicas": 5}})
            )
            .as_deref(),
            Some("spec.replicas")
        );
    }

    #[test]
    fn canonicalised_quantities_are_the_same_value() {
        for (a, b, same) in [
            ("0.5", "500m", true),
            ("1024Mi", "1Gi", true),
            ("1e3", "1k", true),
            ("250m", "250m", true),
            ("250m", "300m", false),
            ("128Mi", "128M", false),
            ("http", "http", true),
            ("http", "https", false),
        ] {
            assert_eq!(
                drift(&json!({ "cpu": a }), &json!({ "cpu": b })).is_none(),
                same,
                "{a} vs {b}"
            );
        }
    }
}
