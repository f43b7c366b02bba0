//! Reconciliation: every unfinished job checked against the queue, so none stays `running`
//! (or `queued`, or half-submitted) forever.
//!
//! The scheduler keeps no state, and the messages it acts on can be missed: a max-deliveries
//! advisory that fired while no scheduler was up, a submit whose scheduler died half-way. So
//! at start, and every [`EVERY`] after, each unfinished job is compared with JetStream:
//!
//! * **provisional** (its submit never finished): abandoned once older than
//!   [`PROVISIONAL_TTL`]: its client was answered with an error or not at all, so nothing of
//!   it may run. A younger one may be a submit in progress on another scheduler.
//! * **queued**: its pending tasks are (re-)published; dedup ids make repeats free.
//! * **running**: each pending image must have a task in `TASKS` or a result waiting in
//!   `RESULTS`. A task that ran out of deliveries (nothing will deliver it again) fails the
//!   image; an image with neither task nor result lost its task and is queued again from the
//!   start.
//! * **paused** or ended: nothing to do.
//!
//! [`plan`] decides from what was found, without I/O, so it is unit-tested directly; the
//! `Jobs` driver gathers the facts ([`Queue`]) and carries the plan out through storage.

use std::{collections::HashMap, time::Duration};

use pixelmesh_proto::v1::{ImageState, Job, JobState};

/// How often reconciliation runs after the start.
pub const EVERY: Duration = Duration::from_secs(300);
/// A submit takes at most this long ([`crate::jobs::SUBMIT_TIMEOUT`] is shorter); a job still
/// provisional after it belongs to a submit that failed or died.
pub const PROVISIONAL_TTL: Duration = Duration::from_secs(120);

/// What the queue holds for one pending image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// A task waits in `TASKS` or a worker holds it.
    Task,
    /// A task sits in `TASKS` that ran out of deliveries: nothing delivers it again.
    Exhausted { deliveries: u64 },
    /// A result waits in `RESULTS` for the scheduler to record it.
    Result,
    /// Neither: the task is lost.
    Nothing,
}

/// What one job needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Remove it: its submit never finished.
    pub abandon: bool,
    /// Publish its pending images' tasks (again).
    pub dispatch: bool,
    /// Pending images whose task is lost: back to the start, then published again.
    pub requeue: Vec<u32>,
    /// Pending images whose task ran out of deliveries, with the error to record.
    pub fail: Vec<(u32, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// The pending images of a running job: the ones [`plan`] needs the queue's word on.
pub fn pending_images(job: &Job) -> Vec<u32> {
    let running = job
        .summary
        .as_ref()
        .is_some_and(|s| s.state() == JobState::Running);
    if !running || job.provisional {
        return Vec::new();
    }
    job.images
        .iter()
        .filter(|image| image.state() == ImageState::Pending)
        .map(|image| image.index)
        .collect()
}

/// Decides what `job` needs at `now_ms`, given what the queue holds for its pending images
/// (`queued`, by image index; an image missing from it is left alone).
pub fn plan(job: &Job, now_ms: i64, queued: &HashMap<u32, Queued>) -> Plan {
    let Some(summary) = &job.summary else {
        return Plan::default();
    };
    if job.provisional {
        let age = now_ms.saturating_sub(summary.created_at_ms);
        return Plan {
            abandon: age >= PROVISIONAL_TTL.as_millis() as i64,
            ..Plan::default()
        };
    }
    match summary.state() {
        JobState::Queued => Plan {
            dispatch: true,
            ..Plan::default()
        },
        JobState::Running => {
            let mut plan = Plan::default();
            for index in pending_images(job) {
                match queued.get(&index) {
                    Some(Queued::Nothing) => plan.requeue.push(index),
                    Some(Queued::Exhausted { deliveries }) => plan.fail.push((
                        index,
                        format!(
                            "gave up after {deliveries} deliveries: no worker finished the task (worker crashed or timed out)"
                        ),
                    )),
                    Some(Queued::Task | Queued::Result) | None => {}
                }
            }
            plan
        }
        _ => Plan::default(),
    }
}

/// Where [`plan`]'s facts come from: JetStream in the scheduler, a map in tests.
pub trait Queue {
    /// What the queue holds for image `index` of job `job`.
    fn look(
        &self,
        job: &str,
        index: u32,
    ) -> impl std::future::Future<Output = Result<Queued, pixelmesh_proto::Error>> + Send;
}

/// Asks `queue` about every pending image of a running `job`, then plans.
pub async fn plan_with(
    job: &Job,
    now_ms: i64,
    queue: &impl Queue,
) -> Result<Plan, pixelmesh_proto::Error> {
    let id = job
        .summary
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_default();
    let mut queued = HashMap::new();
    for index in pending_images(job) {
        queued.insert(index, queue.look(&id, index).await?);
    }
    Ok(plan(job, now_ms, &queued))
}

#[cfg(test)]
mod tests {
    use pixelmesh_proto::v1::{Image, JobSummary};

    use super::*;

    const NOW: i64 = 1_000_000_000;

    fn job(state: JobState, images: &[ImageState]) -> Job {
        Job {
            summary: Some(JobSummary {
                id: "01JQ8Z6W4V3T2S1R0P9N8M7K6J".into(),
                state: state as i32,
                total: images.len() as u32,
                created_at_ms: NOW - 10_000,
                ..Default::default()
            }),
            images: images
                .iter()
                .enumerate()
                .map(|(i, state)| Image {
                    index: i as u32,
                    state: *state as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    struct Map(HashMap<u32, Queued>);

    impl Queue for Map {
        async fn look(&self, _job: &str, index: u32) -> Result<Queued, pixelmesh_proto::Error> {
            self.0.get(&index).copied().ok_or_else(|| {
                pixelmesh_proto::Error::internal("asked about an image it should not")
            })
        }
    }

    #[tokio::test]
    async fn a_running_jobs_pending_images_are_left_failed_or_requeued_by_what_the_queue_holds() {
        use ImageState::{Done, Failed, Pending};
        let running = job(
            JobState::Running,
            &[Pending, Done, Pending, Pending, Failed, Pending],
        );
        let queue = Map(HashMap::from([
            (0, Queued::Task),
            (2, Queued::Result),
            (3, Queued::Nothing),
            (5, Queued::Exhausted { deliveries: 5 }),
        ]));
        // Only pending images are looked up (the map refuses the others).
        let plan = plan_with(&running, NOW, &queue).await.expect("plan");
        assert_eq!(plan.requeue, [3]);
        assert_eq!(plan.fail.len(), 1);
        assert_eq!(plan.fail[0].0, 5);
        assert!(
            plan.fail[0].1.starts_with("gave up after 5 deliveries"),
            "{}",
            plan.fail[0].1
        );
        assert!(!plan.abandon && !plan.dispatch);
    }

    #[test]
    fn a_provisional_job_is_abandoned_only_once_its_submit_must_have_ended() {
        let mut young = job(JobState::Running, &[ImageState::Pending]);
        young.provisional = true;
        let nothing = HashMap::from([(0, Queued::Nothing)]);
        assert!(
            plan(&young, NOW, &nothing).is_empty(),
            "maybe a submit in progress"
        );
        assert!(
            pending_images(&young).is_empty(),
            "no lookups for it either"
        );
        let later = NOW + PROVISIONAL_TTL.as_millis() as i64;
        assert_eq!(
            plan(&young, later, &nothing),
            Plan {
                abandon: true,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn queued_jobs_are_dispatched_and_paused_or_ended_ones_left_alone() {
        let queued = job(JobState::Queued, &[ImageState::Pending]);
        assert!(plan(&queued, NOW, &HashMap::new()).dispatch);
        for state in [
            JobState::Paused,
            JobState::Completed,
            JobState::CompletedWithErrors,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            let job = job(state, &[ImageState::Pending]);
            assert!(pending_images(&job).is_empty());
            assert!(plan(&job, NOW, &HashMap::from([(0, Queued::Nothing)])).is_empty());
        }
    }

    #[test]
    fn a_running_job_with_everything_queued_needs_nothing() {
        let running = job(
            JobState::Running,
            &[ImageState::Pending, ImageState::Pending],
        );
        let queued = HashMap::from([(0, Queued::Task), (1, Queued::Result)]);
        assert!(plan(&running, NOW, &queued).is_empty());
    }
}
