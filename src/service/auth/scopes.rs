//! Scopes and what each route needs: pure, so the table is tested on its own.

use std::fmt;

use axum::http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read merchants, their assessments and reports; classify.
    Read,
    /// Create and change merchants (except their status); assess risk.
    Write,
    /// Change a merchant's status (suspend, close, reactivate).
    Status,
    /// Operations: `Cache-Control: no-cache` reads and the audit trail.
    Ops,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Status, Scope::Ops];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "merchants:read",
            Scope::Write => "merchants:write",
            Scope::Status => "merchants:status",
            Scope::Ops => "ops",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes (four bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Scope::ALL.into_iter().collect()
    }

    fn bit(s: Scope) -> u8 {
        1 << (s as u8)
    }

    pub fn has(self, s: Scope) -> bool {
        self.0 & Self::bit(s) != 0
    }

    pub fn any_of(self, wanted: &[Scope]) -> bool {
        wanted.iter().any(|s| self.has(*s))
    }

    /// Scope names from a token's `scope` (space-separated) or `scp` claim, ignoring names this API
    /// does not define (an issuer's token often carries scopes for other audiences too).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        names.into_iter().filter_map(Scope::parse).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |acc, s| acc | Self::bit(s)))
    }
}

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Probes, the API document: no credentials.
    Nothing,
    /// A caller holding any one of these scopes.
    AnyOf(&'static [Scope]),
}

/// The scope a request needs, by method and matched route (`None` for a route this table does not
/// know, which is refused: a new route must be added here to be reachable).
pub fn needed(method: &Method, route: &str) -> Option<Needs> {
    use Scope::*;
    let needs = match (method.as_str(), route) {
        (_, "/health" | "/ready" | "/openapi.json") => Needs::Nothing,
        ("GET", "/v1/merchants" | "/v1/merchants/{id}" | "/v1/merchants/{id}/risk-assessments") => {
            Needs::AnyOf(&[Read])
        }
        ("GET", "/v1/reports/industries" | "/v1/jobs/{id}") | ("POST", "/v1/classifications") => {
            Needs::AnyOf(&[Read])
        }
        (
            "POST",
            "/v1/merchants" | "/v1/merchants:import" | "/v1/merchants/{id}/risk-assessments",
        ) => Needs::AnyOf(&[Write]),
        // Which of the two depends on the fields changed; the handler checks the rest.
        ("PATCH", "/v1/merchants/{id}") => Needs::AnyOf(&[Write, Status]),
        ("GET", "/v1/merchants/{id}/status-changes") => Needs::AnyOf(&[Ops]),
        _ => return None,
    };
    Some(needs)
}

/// The methods the table grants on `route`, for `Allow` when another method is asked for (empty for a
/// route it does not know).
pub fn allowed(route: &str) -> Vec<Method> {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ]
    .into_iter()
    .filter(|m| needed(m, route).is_some())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_scope() {
        let get = Method::GET;
        assert_eq!(needed(&get, "/health"), Some(Needs::Nothing));
        assert_eq!(needed(&get, "/ready"), Some(Needs::Nothing));
        assert_eq!(
            needed(&get, "/v1/merchants/{id}"),
            Some(Needs::AnyOf(&[Scope::Read]))
        );
        assert_eq!(
            needed(&Method::POST, "/v1/merchants"),
            Some(Needs::AnyOf(&[Scope::Write]))
        );
        assert_eq!(
            needed(&Method::PATCH, "/v1/merchants/{id}"),
            Some(Needs::AnyOf(&[Scope::Write, Scope::Status]))
        );
        assert_eq!(
            needed(&get, "/v1/merchants/{id}/status-changes"),
            Some(Needs::AnyOf(&[Scope::Ops]))
        );
        assert_eq!(needed(&Method::DELETE, "/v1/merchants/{id}"), None);
        assert_eq!(
            allowed("/v1/merchants/{id}"),
            [Method::GET, Method::PATCH],
            "what a 405 lists in Allow"
        );
        assert!(allowed("/v1/nothing").is_empty());
        assert_eq!(needed(&get, "/metrics"), None, "not on the API port");
    }

    #[test]
    fn scope_sets() {
        let s = Scopes::from_names("openid merchants:read profile ops".split(' '));
        assert!(s.has(Scope::Read) && s.has(Scope::Ops));
        assert!(!s.has(Scope::Write) && !s.has(Scope::Status));
        assert!(s.any_of(&[Scope::Write, Scope::Ops]));
        assert!(!Scopes::default().any_of(&Scope::ALL));
        assert!(Scope::ALL.iter().all(|x| Scopes::all().has(*x)));
    }
}
