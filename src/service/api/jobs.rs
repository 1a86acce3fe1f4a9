//! `GET /v1/jobs/{id}`: where an asynchronous request stands.

use uuid::Uuid;

use super::error::{ApiError, ApiPath, Problem};
use super::State;
use crate::jobs::queue::{self, JobView, QueueError};

/// A job: `queued`, `running`, `succeeded` (with its `result`), `failed` (an attempt failed and a
/// retry is scheduled), `dead` (attempts used up) or `cancelled`. A failure is told by its kind and
/// a message for the caller; its detail (hosts, statements, panics) is for operators only.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "jobs"
)]
pub async fn get(
    axum::extract::State(state): State,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<axum::Json<JobView>, ApiError> {
    // A job lives in the shard of the write that enqueued it, which its id does not name.
    for shard in state.db.shards() {
        match queue::get(shard.writable()?, id).await {
            Ok(Some(job)) => return Ok(axum::Json(job.for_caller())),
            Ok(None) => {}
            Err(QueueError::Db(e)) => return Err(e.into()),
            Err(e) => return Err(ApiError::Internal(e.to_string())),
        }
    }
    Err(ApiError::NotFound("job"))
}
