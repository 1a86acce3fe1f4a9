//! Children of kinds this crate has no types for (KEDA's, the Prometheus Operator's), handled as
//! `DynamicObject`s: whether the apiserver serves the kind (its CRDs are installed), and an apply that
//! writes only what changed. Not watched into caches like the other children: these kinds may be
//! absent, and a watch on a missing kind fails; one read per apply is the price. That read also
//! shows who holds the name: as for the typed children, an object that is not the platform's is
//! neither taken over nor deleted (see `ownership`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, Preconditions,
};
use kube::{Client, ResourceExt};

use super::build::FIELD_MANAGER;
use super::ownership;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    NameTaken(#[from] ownership::NameTaken),
}

impl Error {
    /// The kind itself is no longer served (its CRD was deleted since discovery): every call that
    /// could fail with a 404 here is a list, an apply or a delete that treats a missing object as
    /// done, so a 404 is the kind, not one object.
    pub fn kind_gone(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(a)) if a.code == 404)
    }
}

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
/// it wrote; refuses, writing nothing, when the name is held by an object not the platform's.
pub async fn apply(api: &Api<DynamicObject>, mut desired: DynamicObject) -> Result<bool, Error> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let h = hash(&desired);
    let live = api.get_opt(&name).await?;
    if let Some(why) = live
        .as_ref()
        .and_then(|l| ownership::conflict(&l.metadata, &desired.metadata))
    {
        return Err(ownership::NameTaken {
            kind: kind_of(live.as_ref(), &desired),
            name,
            why,
        }
        .into());
    }
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

fn kind_of(live: Option<&DynamicObject>, desired: &DynamicObject) -> String {
    live.and_then(|l| l.types.as_ref())
        .or(desired.types.as_ref())
        .map(|t| t.kind.clone())
        .unwrap_or_default()
}

/// Deletes `name` if it exists and is the platform's: `claim` is the metadata the platform's
/// children carry (its controlling owner reference and instance label). An object of someone else's
/// under the name is left alone. Returns whether it deleted.
pub async fn delete(
    api: &Api<DynamicObject>,
    name: &str,
    claim: &ObjectMeta,
) -> Result<bool, kube::Error> {
    let Some(live) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if let Some(why) = ownership::conflict(&live.metadata, claim) {
        tracing::info!(name = %name, why = %why, "not deleting an object that is not the platform's");
        return Ok(false);
    }
    // The uid precondition: if the object was replaced since the read, the new one is not judged.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: live.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
