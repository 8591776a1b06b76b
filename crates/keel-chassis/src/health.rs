//! Health in the Spring Actuator shape: `GET /health`, `/health/live`, `/health/ready`.
//!
//! ```json
//! {"status":"UP","components":{"database":{"status":"UP"},
//!                              "lifecycle":{"status":"UP","details":{"phase":"ready"}},
//!                              "ping":{"status":"UP"}}}
//! ```
//!
//! Checks are registered by name and kind. Liveness checks decide `/health/live`;
//! readiness checks and the lifecycle phase (starting → ready → draining) decide
//! `/health/ready`; `/health` shows everything. A non-UP answer is served with 503.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;

/// Status of a component or of the whole service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Working.
    Up,
    /// Unknown state (check not conclusive).
    Unknown,
    /// Deliberately not taking traffic (starting or draining).
    OutOfService,
    /// Broken.
    Down,
}

/// The outcome of one health check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentHealth {
    /// The component's status.
    pub status: Status,
    /// Free-form details (error message, pool sizes, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ComponentHealth {
    /// UP without details.
    pub fn up() -> Self {
        Self {
            status: Status::Up,
            details: None,
        }
    }

    /// DOWN with an error message under `details.error`.
    pub fn down(error: impl std::fmt::Display) -> Self {
        Self {
            status: Status::Down,
            details: Some(serde_json::json!({ "error": error.to_string() })),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// The aggregated answer served by the health endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Worst status of all components.
    pub status: Status,
    /// Component name → its health.
    pub components: BTreeMap<String, ComponentHealth>,
}

impl HealthReport {
    /// Whether the report should be served with 200.
    pub fn is_up(&self) -> bool {
        self.status == Status::Up
    }
}

/// What a check decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// Only `/health` and `/health/live`: failing means the process should be restarted.
    Liveness,
    /// `/health` and `/health/ready`: failing means traffic should go elsewhere.
    Readiness,
}

/// The lifecycle phase of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Initializing; not ready for traffic.
    Starting,
    /// Serving.
    Ready,
    /// Shutting down; finishing in-flight work, not taking new traffic.
    Draining,
}

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, ComponentHealth> + Send + Sync>;

struct Check {
    name: String,
    kind: CheckKind,
    run: CheckFn,
}

/// The registry of health checks and the lifecycle phase. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    phase: AtomicU8,
    checks: RwLock<Vec<Check>>,
    timeout: Duration,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A registry in phase [`Phase::Starting`] with no checks; each check gets 2 s.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                phase: AtomicU8::new(0),
                checks: RwLock::new(Vec::new()),
                timeout: Duration::from_secs(2),
            }),
        }
    }

    /// Registers a check. `check` is called on every request to a health endpoint it
    /// belongs to, and is given 2 s before it counts as DOWN.
    pub fn register<F, Fut>(&self, name: impl Into<String>, kind: CheckKind, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ComponentHealth> + Send + 'static,
    {
        let run: CheckFn = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.push(Check {
                name: name.into(),
                kind,
                run,
            });
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase`. Draining is final: once draining, the service never reports ready again.
    pub fn set_phase(&self, phase: Phase) {
        let v = match phase {
            Phase::Starting => 0,
            Phase::Ready => 1,
            Phase::Draining => 2,
        };
        let _ = self
            .inner
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur != 2).then_some(v)
            });
    }

    /// Everything: lifecycle and every check.
    pub async fn overall(&self) -> HealthReport {
        self.report(|_| true, true).await
    }

    /// Liveness checks only.
    pub async fn liveness(&self) -> HealthReport {
        self.report(|k| k == CheckKind::Liveness, false).await
    }

    /// Lifecycle phase and readiness checks.
    pub async fn readiness(&self) -> HealthReport {
        self.report(|k| k == CheckKind::Readiness, true).await
    }

    async fn report(&self, include: impl Fn(CheckKind) -> bool, lifecycle: bool) -> HealthReport {
        let selected: Vec<(String, CheckFn)> = self
            .inner
            .checks
            .read()
            .map(|c| {
                c.iter()
                    .filter(|c| include(c.kind))
                    .map(|c| (c.name.clone(), c.run.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let timeout = self.inner.timeout;
        let results =
            futures::future::join_all(selected.into_iter().map(|(name, run)| async move {
                let health = match tokio::time::timeout(timeout, run()).await {
                    Ok(h) => h,
                    Err(_) => ComponentHealth::down(format!("check timed out after {timeout:?}")),
                };
                (name, health)
            }))
            .await;
        let mut components: BTreeMap<String, ComponentHealth> = results.into_iter().collect();
        components.insert("ping".into(), ComponentHealth::up());
        if lifecycle {
            let (status, phase) = match self.phase() {
                Phase::Starting => (Status::OutOfService, "starting"),
                Phase::Ready => (Status::Up, "ready"),
                Phase::Draining => (Status::OutOfService, "draining"),
            };
            components.insert(
                "lifecycle".into(),
                ComponentHealth {
                    status,
                    details: Some(serde_json::json!({ "phase": phase })),
                },
            );
        }
        let status = components
            .values()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Up);
        HealthReport { status, components }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle_decides_readiness_not_liveness() {
        let h = Health::new();
        assert_eq!(h.readiness().await.status, Status::OutOfService);
        assert_eq!(h.liveness().await.status, Status::Up);
        h.set_phase(Phase::Ready);
        assert!(h.readiness().await.is_up());
        h.set_phase(Phase::Draining);
        h.set_phase(Phase::Ready);
        assert_eq!(h.phase(), Phase::Draining, "draining is final");
        assert_eq!(h.readiness().await.status, Status::OutOfService);
    }

    #[tokio::test]
    async fn failing_check_makes_its_endpoints_down() {
        let h = Health::new();
        h.set_phase(Phase::Ready);
        h.register("db", CheckKind::Readiness, || async {
            ComponentHealth::down("connection refused")
        });
        let r = h.readiness().await;
        assert_eq!(r.status, Status::Down);
        assert_eq!(
            r.components["db"].details.as_ref().unwrap()["error"],
            "connection refused"
        );
        assert!(h.liveness().await.is_up());
        assert_eq!(h.overall().await.status, Status::Down);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_check_times_out_as_down() {
        let h = Health::new();
        h.register("slow", CheckKind::Liveness, || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            ComponentHealth::up()
        });
        let r = h.liveness().await;
        assert_eq!(r.components["slow"].status, Status::Down);
    }
}
