//! The API's route templates, matched once per request by the service-wide observation layer, which
//! records the template (span, metrics) and hands it to authentication through the request's
//! [`RequestContext`](super::middleware::RequestContext).
//!
//! Matched outside the router rather than learnt from it: the router tells a layer its template only
//! from inside (`Router::route_layer`), and axum wraps every route once more per such layer, a boxed
//! service cloned and a boxed future made on every request (~1,250 instructions of a `GET /health`,
//! BENCHMARKS.md). The table is built from the same list as the router ([`super::routes`]) and
//! matched by the same matcher axum uses (matchit), so the two cannot disagree on a template.

/// Route templates (axum's syntax, `{id}` for a segment), to find which one a path matches.
pub struct RouteTable(matchit::Router<&'static str>);

impl RouteTable {
    /// A table of `templates`; fails on a template matchit refuses or two that conflict, as axum's
    /// `Router::route` would.
    pub fn new(
        templates: impl IntoIterator<Item = &'static str>,
    ) -> Result<Self, matchit::InsertError> {
        let mut matcher = matchit::Router::new();
        for t in templates {
            matcher.insert(t, t)?;
        }
        Ok(Self(matcher))
    }

    /// The template `path` matches (a request URI's path, not decoded, as the router matches it).
    pub fn find(&self, path: &str) -> Option<&'static str> {
        self.0.at(path).ok().map(|m| *m.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_templates() {
        let t = RouteTable::new([
            "/health",
            "/v1/merchants",
            "/v1/merchants:import",
            "/v1/merchants/{id}",
            "/v1/merchants/{id}/risk-assessments",
        ])
        .unwrap();
        assert_eq!(t.find("/health"), Some("/health"));
        assert_eq!(t.find("/v1/merchants"), Some("/v1/merchants"));
        assert_eq!(t.find("/v1/merchants:import"), Some("/v1/merchants:import"));
        assert_eq!(t.find("/v1/merchants/m-1"), Some("/v1/merchants/{id}"));
        assert_eq!(
            t.find("/v1/merchants/m-1/risk-assessments"),
            Some("/v1/merchants/{id}/risk-assessments")
        );
        // As axum matches: no trailing-slash redirect, no empty segment for a parameter.
        assert_eq!(t.find("/health/"), None);
        assert_eq!(t.find("/v1/merchants/"), None);
        assert_eq!(t.find("/v1/merchants/m-1/other"), None);
        assert_eq!(t.find("/"), None);
    }

    #[test]
    fn conflicting_templates_are_refused() {
        assert!(RouteTable::new(["/v1/merchants/{id}", "/v1/merchants/{other}"]).is_err());
        assert!(RouteTable::new(["/health", "/health"]).is_err());
    }
}
