//! Why an attempt failed, in two forms: the detail for operators (the worker's log, the dead letters,
//! `kybctl jobs show`) and what `GET /v1/jobs/{id}` may tell the job's caller. The detail can name
//! hosts, statements and panic messages; the API answers those with its problem documents' rule
//! (`api::error`): a kind and a fixed sentence, the detail only where this code wrote it about the
//! job itself.

/// The kinds of failure, stored beside the detail (`jobs.last_error_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The job cannot be done as asked (its merchant does not exist, its payload or kind is not one
    /// this release knows). Retrying does not help until that changes.
    Rejected,
    /// A service the job needs (its database, the registry) did not answer.
    Unavailable,
    /// A bug or an unexpected answer: a panic, an unreadable row, a failed statement.
    Internal,
    /// The attempt ran past the worker's job timeout.
    Timeout,
    /// The worker running it stopped renewing its lease (it died or stalled).
    Expired,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Timeout => "timeout",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Rejected,
            Self::Unavailable,
            Self::Internal,
            Self::Timeout,
            Self::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// The caller's view of a recorded failure: its kind (`internal` for a row recorded before kinds
/// were, whose detail nobody vetted) and a message. Only a rejection's or a timeout's detail is
/// shown: this code writes those about the job itself (its merchant, its payload, the timeout).
pub fn for_caller(kind: Option<&str>, detail: &str) -> (FailureKind, String) {
    let kind = kind
        .and_then(FailureKind::parse)
        .unwrap_or(FailureKind::Internal);
    let message = match kind {
        FailureKind::Rejected | FailureKind::Timeout => detail.to_owned(),
        FailureKind::Unavailable => {
            "a service the job needs was unavailable; it is retried while attempts remain".into()
        }
        FailureKind::Expired => {
            "the worker running it stopped before finishing; it is retried while attempts remain"
                .into()
        }
        FailureKind::Internal => {
            "the job failed inside the worker; its operators have the details".into()
        }
    };
    (kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [
            FailureKind::Rejected,
            FailureKind::Unavailable,
            FailureKind::Internal,
            FailureKind::Timeout,
            FailureKind::Expired,
        ] {
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FailureKind::parse("Rejected"), None);
    }

    #[test]
    fn callers_see_only_what_was_written_about_the_job() {
        let (kind, msg) = for_caller(Some("rejected"), "no merchant 42 on this shard");
        assert_eq!(
            (kind, msg.as_str()),
            (FailureKind::Rejected, "no merchant 42 on this shard")
        );
        let (kind, msg) = for_caller(Some("timeout"), "timed out after 30s");
        assert_eq!(
            (kind, msg.as_str()),
            (FailureKind::Timeout, "timed out after 30s")
        );
        for (stored, detail, want) in [
            (
                Some("unavailable"),
                "database unavailable: db-0.internal:5432 refused",
                FailureKind::Unavailable,
            ),
            (
                Some("internal"),
                "the job panicked: token=abc",
                FailureKind::Internal,
            ),
            (
                Some("expired"),
                "lease expired: worker kyb-worker-7f9c stopped renewing it",
                FailureKind::Expired,
            ),
            // Recorded before kinds were, or by a newer release: nobody vetted the detail.
            (
                None,
                "database error: relation \"secret\" does not exist",
                FailureKind::Internal,
            ),
            (Some("quota"), "db-0.internal", FailureKind::Internal),
        ] {
            let (kind, msg) = for_caller(stored, detail);
            assert_eq!(kind, want, "{stored:?}");
            assert!(!msg.is_empty());
            for secret in ["internal:", "token", "kyb-worker", "secret", "db-0"] {
                assert!(!msg.contains(secret), "{stored:?}: {msg}");
            }
        }
    }
}
