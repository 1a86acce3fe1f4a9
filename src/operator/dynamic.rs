//! Children of kinds this crate has no types for (KEDA's, the Prometheus Operator's), handled as
//! `DynamicObject`s: whether the apiserver serves the kind (its CRDs are installed), and an apply that
//! writes only what changed. Not watched into caches like the other children: these kinds may be
//! absent, and a watch on a missing kind fails; one read per apply is the price.

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;

use super::build::FIELD_MANAGER;

/// Marks what was applied, so an unchanged object is not written again.
const APPLIED_HASH: &str = "kyb.io/applied-hash";

/// Whether the apiserver serves `gvk` (its CRD is installed and established).
pub async fn served(client: &Client, gvk: &GroupVersionKind) -> Result<bool, kube::Error> {
    match kube::discovery::pinned_kind(client, gvk).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(kube::Error::Discovery(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn hash(o: &DynamicObject) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(&(&o.metadata, &o.data)).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Applies `desired` (server-side, forced: these fields are the operator's) unless the live object
/// was applied from the same state and still holds every desired field (an edit of one, say a
/// `kubectl edit` of an alert's threshold, is undone as for the typed children). Returns whether
/// it wrote.
pub async fn apply(
    api: &Api<DynamicObject>,
    mut desired: DynamicObject,
) -> Result<bool, kube::Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let h = hash(&desired);
    let live = api.get_opt(&name).await?;
    let applied = live
        .as_ref()
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(APPLIED_HASH));
    let edited = live
        .as_ref()
        .and_then(|l| super::drift::drift(&desired.data, &l.data));
    if applied == Some(&h) {
        match edited {
            None => return Ok(false),
            Some(path) => {
                tracing::info!(name = %name, field = %path, "undoing an edit of an owned field")
            }
        }
    }
    desired
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH.into(), h);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    Ok(true)
}

/// Deletes `name` if it exists. Returns whether it did.
pub async fn delete(api: &Api<DynamicObject>, name: &str) -> Result<bool, kube::Error> {
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}
