//! Whether an object found under a child's name is the platform's to apply. The operator applies
//! with force (its fields are its own), so without this check it would take over whatever holds the
//! name: a platform named `kyb-worker` and the worker Deployment of a platform `kyb` in the same
//! namespace would overwrite each other on every reconcile, and a platform would rewrite an
//! unrelated Deployment that happens to share its name.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::build::FIELD_MANAGER;

/// A child's name held by an object that is not the platform's: the platform is refused, the object
/// left as it is.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name} {why}: applying this platform would take it over; rename the platform or remove that object")]
pub struct NameTaken {
    pub kind: String,
    pub name: String,
    pub why: String,
}

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const INSTANCE: &str = "app.kubernetes.io/instance";

/// Why `desired` must not be applied over `live` (an object already under its name), or `None` when
/// it may: `live` is controlled by `desired`'s controlling owner, or it is an orphan this operator
/// made for the same instance (after `kubectl delete --cascade=orphan` of its platform), adopted as
/// Kubernetes' own controllers adopt theirs. A `desired` without a controlling owner claims nothing.
pub fn conflict(live: &ObjectMeta, desired: &ObjectMeta) -> Option<String> {
    let controller = |m: &ObjectMeta| {
        m.owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .cloned()
    };
    let ours = controller(desired)?;
    match controller(live) {
        Some(theirs) if theirs.uid == ours.uid => None,
        Some(theirs) => Some(format!("is controlled by {} {}", theirs.kind, theirs.name)),
        None => {
            let label = |m: &ObjectMeta, key: &str| m.labels.as_ref()?.get(key).cloned();
            let made_by_us = label(live, MANAGED_BY).as_deref() == Some(FIELD_MANAGER)
                && label(live, INSTANCE).is_some()
                && label(live, INSTANCE) == label(desired, INSTANCE);
            (!made_by_us).then(|| {
                "exists and was not made by this operator for this platform (it has no \
                 controlling owner and not this platform's labels)"
                    .to_owned()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned_by(uid: &str, name: &str, instance: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("kyb-worker".into()),
            labels: Some(
                [
                    (MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
                    (INSTANCE.to_owned(), instance.to_owned()),
                ]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "kyb.io/v1alpha1".into(),
                kind: "KybPlatform".into(),
                name: name.into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn a_platform_applies_over_its_own_children_only() {
        // Platform `kyb-worker` wants the name platform `kyb`'s worker Deployment has.
        let desired = owned_by("uid-b", "kyb-worker", "kyb-worker");
        assert_eq!(
            conflict(&owned_by("uid-b", "kyb-worker", "kyb-worker"), &desired),
            None
        );
        let e = conflict(&owned_by("uid-a", "kyb", "kyb"), &desired).unwrap();
        assert!(e.contains("KybPlatform kyb"), "{e}");
    }

    #[test]
    fn only_its_own_orphans_are_adopted() {
        let desired = owned_by("uid-b", "kyb", "kyb");
        let mut orphan = owned_by("uid-old", "kyb", "kyb");
        orphan.owner_references = None;
        assert_eq!(
            conflict(&orphan, &desired),
            None,
            "the platform's own, orphaned"
        );
        let mut other_instance = orphan.clone();
        other_instance
            .labels
            .as_mut()
            .unwrap()
            .insert(INSTANCE.into(), "kyb-staging".into());
        assert!(conflict(&other_instance, &desired).is_some());
        let unrelated = ObjectMeta {
            name: Some("kyb".into()),
            ..Default::default()
        };
        assert!(conflict(&unrelated, &desired)
            .unwrap()
            .contains("not made by this operator"));
        // An owner that is not a controller claims nothing.
        let mut garbage_collected_only = owned_by("uid-x", "app", "kyb");
        garbage_collected_only.owner_references.as_mut().unwrap()[0].controller = None;
        assert_eq!(conflict(&garbage_collected_only, &desired), None);
    }

    #[test]
    fn a_child_without_a_controller_claims_nothing() {
        let mut desired = owned_by("uid-b", "kyb", "kyb");
        desired.owner_references = None;
        assert_eq!(conflict(&owned_by("uid-a", "x", "x"), &desired), None);
    }
}
