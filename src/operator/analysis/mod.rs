//! Rollout analysis: templates of metrics (`crd`), the judgement of each measurement and of a whole run
//! (`assess`, pure), the providers that take measurements (`providers`; `jobs` for those that measure
//! with a Kubernetes Job), and the runs the operator drives for a rollout (`runs`).

pub mod assess;
pub mod crd;
pub mod jobs;
pub mod providers;
pub mod runs;
