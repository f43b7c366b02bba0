//! The job state machine against the in-memory store and queue of [`crate::fakes`]: what
//! is published, purged and stored after each step. The e2e tests in `tests/` run the same
//! steps over real gRPC and NATS.

use pixelmesh_common::nats;
use pixelmesh_proto::{
    ErrorCode,
    v1::{
        Grayscale, ImageInput, ImageState, Job, JobState, Operation, Output, Rect, Resize,
        SubmitJobRequest, TaskResult, TileInput, TileOutput, TileSplit, Tiling, operation, task,
        task_result::Outcome,
    },
};

use pixelmesh_pipeline::ops::Pipeline;

use super::Jobs;
use crate::{
    Settings,
    fakes::{MemoryQueue, MemoryStore},
    reconcile::PROVISIONAL_TTL,
};

const OWNER: &str = "alice";

struct Mesh {
    jobs: Jobs<MemoryStore, MemoryQueue>,
    store: MemoryStore,
    queue: MemoryQueue,
}

fn mesh() -> Mesh {
    mesh_with(Settings::default())
}

fn mesh_with(settings: Settings) -> Mesh {
    let (store, queue) = (MemoryStore::default(), MemoryQueue::default());
    Mesh {
        jobs: Jobs::new(store.clone(), queue.clone(), settings),
        store,
        queue,
    }
}

fn blob(i: usize) -> String {
    format!("{i:064x}")
}

fn grayscale() -> Operation {
    Operation {
        op: Some(operation::Op::Grayscale(Grayscale {})),
    }
}

/// `images` inputs of 100 x 100 pixels that `OWNER` uploaded, through a grayscale.
fn request(mesh: &Mesh, images: usize) -> SubmitJobRequest {
    SubmitJobRequest {
        pipeline: vec![grayscale()],
        inputs: (0..images)
            .map(|i| {
                mesh.store.add_blob(&blob(i), OWNER, 100, 100);
                ImageInput {
                    blob_id: blob(i),
                    name: format!("image-{i}.png"),
                    url: String::new(),
                }
            })
            .collect(),
        owner: OWNER.into(),
        ..Default::default()
    }
}

fn id(job: &Job) -> String {
    job.summary.as_ref().expect("summary").id.clone()
}

fn state(job: &Job) -> JobState {
    job.summary.as_ref().expect("summary").state()
}

fn image_states(job: &Job) -> Vec<ImageState> {
    job.images.iter().map(|image| image.state()).collect()
}

fn outcome(job: &str, index: u32, outcome: Outcome) -> TaskResult {
    TaskResult {
        job_id: job.into(),
        index,
        outcome: Some(outcome),
        worker_id: "worker-1".into(),
        attempts: 2,
        duration_ms: 5,
    }
}

fn done(job: &str, index: u32) -> TaskResult {
    let output = Output {
        blob_id: format!("out-{index}"),
        ..Default::default()
    };
    outcome(job, index, Outcome::Output(output))
}

fn failed(job: &str, index: u32) -> TaskResult {
    outcome(job, index, Outcome::Error("cannot decode".into()))
}

/// The dedup ids of the job's tasks still in the stream, sorted.
fn queued_ids(mesh: &Mesh, job: &str) -> Vec<String> {
    let mut ids: Vec<String> = mesh
        .queue
        .queued(job)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    ids
}

/// What a scheduler that died mid-submit leaves: `request`'s job stored as `id`, never
/// confirmed, and only the task of its first image queued.
async fn left_mid_submit(mesh: &Mesh, id: &str, request: &SubmitJobRequest) {
    use crate::{queue::TaskQueue as _, store::JobStore as _};
    let create = pixelmesh_proto::v1::CreateJobRequest {
        id: id.to_string(),
        pipeline: request.pipeline.clone(),
        inputs: request.inputs.clone(),
        owner: OWNER.into(),
        ..Default::default()
    };
    let job = mesh.store.create_job(create).await.expect("create");
    let task = mesh.jobs.image_task(&job, 0);
    mesh.queue
        .publish_task(task, nats::task_id(id, 0, 0))
        .await
        .expect("publish");
}

async fn submitted(mesh: &Mesh, images: usize) -> String {
    id(&mesh
        .jobs
        .submit(request(mesh, images))
        .await
        .expect("submit"))
}

// ------------------------------------------------------------------------------- submit

#[tokio::test]
async fn a_submit_queues_one_task_per_image_then_confirms_the_job() {
    let mesh = mesh();
    let job = mesh.jobs.submit(request(&mesh, 3)).await.expect("submit");
    let id = id(&job);
    assert_eq!(state(&job), JobState::Running);
    assert!(!job.provisional);

    let stored = mesh.store.job(&id).expect("stored");
    assert_eq!(state(&stored), JobState::Running);
    assert!(
        !stored.provisional,
        "confirmed in storage, not only in the answer"
    );
    assert_eq!(
        queued_ids(&mesh, &id),
        (0..3).map(|i| nats::task_id(&id, i, 0)).collect::<Vec<_>>()
    );
    let task = mesh.queue.take(&id, 1).expect("task of image 1");
    assert_eq!(task.input_blob_id, blob(1));
    assert_eq!(task.name, "image-1.png");
    assert_eq!(task.pipeline, [grayscale()]);
    assert_eq!(task.tile_size, Settings::default().tile_size);
    assert!(
        task.stage.is_none(),
        "a whole image, for its worker to split or not"
    );
    let progress = mesh.queue.progress();
    assert_eq!(progress.len(), 1, "{progress:?}");
    assert_eq!(
        progress[0].summary.as_ref().map(|s| s.state()),
        Some(JobState::Running)
    );
}

#[tokio::test]
async fn a_submit_over_the_memory_budget_is_refused_naming_the_image_before_anything_is_stored() {
    let mesh = mesh_with(Settings {
        max_image_memory_bytes: 8 << 20,
        ..Settings::default()
    });
    let mut request = request(&mesh, 2);
    // 4000 x 4000 RGBA is 64 MB of pixels, over 8 MB whatever the pipeline.
    mesh.store.add_blob(&blob(1), OWNER, 4000, 4000);
    request.inputs[1].name = "huge.png".into();

    let err = mesh
        .jobs
        .submit(request.clone())
        .await
        .expect_err("over budget");
    assert_eq!(err.code, ErrorCode::ResourceExhausted);
    assert!(
        err.message.contains("input 1 (huge.png)"),
        "{}",
        err.message
    );
    assert_eq!(
        mesh.store.calls(),
        ["check_blobs"],
        "refused before creating the job"
    );
    assert!(mesh.queue.stored().is_empty());

    // The same job fits once the limit is off: the refusal was the budget's.
    let mesh = Mesh {
        jobs: Jobs::new(
            mesh.store.clone(),
            mesh.queue.clone(),
            Settings {
                max_image_memory_bytes: 0,
                ..Settings::default()
            },
        ),
        ..mesh
    };
    mesh.jobs.submit(request).await.expect("no limit");
}

#[tokio::test]
async fn an_animation_is_refused_by_an_op_that_cannot_animate_and_budgeted_per_frame() {
    let mesh = mesh_with(Settings {
        max_image_memory_bytes: 64 << 20,
        ..Settings::default()
    });
    let mut request = request(&mesh, 2);
    mesh.store.add_animation(&blob(1), OWNER, 400, 300, 12);
    request.inputs[1].name = "spin.gif".into();
    let pipeline = |text: &str| Pipeline::from_text(text).unwrap().to_proto();

    request.pipeline = pipeline("resize:w=100/analyze");
    let err = mesh
        .jobs
        .submit(request.clone())
        .await
        .expect_err("analyze");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
    assert!(
        err.message.starts_with(
            "input 1 (spin.gif): the input is an animation of 12 frames and op 2 (analyze) cannot animate"
        ),
        "{}",
        err.message
    );
    assert!(mesh.store.job_ids().is_empty());

    // Every frame counts: 12 frames of 400 x 300 fit in 64 MiB, 200 do not.
    request.pipeline = pipeline("resize:w=100/format:webp");
    mesh.jobs
        .submit(request.clone())
        .await
        .expect("12 frames fit");
    mesh.store.add_animation(&blob(1), OWNER, 400, 300, 200);
    let err = mesh
        .jobs
        .submit(request.clone())
        .await
        .expect_err("200 frames");
    assert_eq!(err.code, ErrorCode::ResourceExhausted);
    // One frame picked is one frame's cost, whatever the op.
    request.pipeline = pipeline("resize:w=100/analyze/format:png,frame=0");
    mesh.jobs.submit(request).await.expect("one frame");
}

#[tokio::test]
async fn a_submit_naming_a_blob_of_another_key_is_refused_as_not_found() {
    let mesh = mesh();
    let mut request = request(&mesh, 2);
    mesh.store.add_blob(&blob(7), "bob", 100, 100);
    request.inputs[1].blob_id = blob(7);

    let err = mesh
        .jobs
        .submit(request.clone())
        .await
        .expect_err("bob's blob");
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(
        err.message.starts_with("input 1 (image-1.png)"),
        "{}",
        err.message
    );
    assert!(mesh.store.job_ids().is_empty());

    request.admin = true;
    mesh.jobs
        .submit(request)
        .await
        .expect("an admin may use any blob");
}

#[tokio::test]
async fn a_submit_is_refused_before_anything_is_stored_when_the_queue_is_unreachable() {
    let mesh = mesh();
    mesh.queue.disconnect();
    let err = mesh
        .jobs
        .submit(request(&mesh, 1))
        .await
        .expect_err("queue down");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(
        err.message.contains("nothing was submitted"),
        "{}",
        err.message
    );
    assert_eq!(mesh.store.calls(), [] as [&str; 0], "storage never asked");
}

#[tokio::test]
async fn invalid_submits_are_refused_before_anything_is_stored() {
    let mesh = mesh();
    let mut empty = request(&mesh, 1);
    empty.inputs.clear();
    let resize = Operation {
        op: Some(operation::Op::Resize(Resize {
            width: 100,
            ..Default::default()
        })),
    };
    let untileable = SubmitJobRequest {
        pipeline: vec![resize],
        tiling: Tiling::Always as i32,
        ..request(&mesh, 1)
    };
    let mut control = request(&mesh, 1);
    control.inputs[0].name = "bad\nname".into();
    for (what, request) in [
        ("no inputs", empty),
        ("resize cannot run on tiles", untileable),
        ("control character in a name", control),
    ] {
        let err = mesh.jobs.submit(request).await.expect_err(what);
        assert_eq!(
            err.code,
            ErrorCode::InvalidArgument,
            "{what}: {}",
            err.message
        );
    }
    assert!(mesh.store.job_ids().is_empty());
    assert!(mesh.queue.stored().is_empty());
}

#[tokio::test]
async fn a_submit_sent_again_with_its_job_id_answers_the_same_job_and_queues_nothing_twice() {
    let mesh = mesh();
    let id = ulid::Ulid::new().to_string();
    let first = SubmitJobRequest {
        job_id: id.clone(),
        ..request(&mesh, 3)
    };
    let again = first.clone();
    let job = mesh.jobs.submit(first).await.expect("submit");
    assert_eq!(self::id(&job), id, "the gateway's id is the job's");
    let repeated = mesh.jobs.submit(again.clone()).await.expect("sent again");
    assert_eq!(self::id(&repeated), id);
    assert_eq!(state(&repeated), JobState::Running);
    assert_eq!(mesh.store.job_ids(), vec![id.clone()], "one job stored");
    assert_eq!(mesh.queue.stored().len(), 3, "each task queued once");

    // The same id from another key (who uploaded the same bytes) is not that key's job, and
    // is not abandoned for it.
    for i in 0..3 {
        mesh.store.add_blob(&blob(i), "mallory", 100, 100);
    }
    let other = SubmitJobRequest {
        owner: "mallory".into(),
        ..again
    };
    let err = mesh.jobs.submit(other).await.expect_err("another key");
    assert_eq!(err.code, ErrorCode::AlreadyExists, "{}", err.message);
    assert!(mesh.store.job(&id).is_some());
    assert!(mesh.queue.purged().is_empty(), "{:?}", mesh.queue.purged());

    let bad = SubmitJobRequest {
        job_id: "not a ulid".into(),
        ..request(&mesh, 1)
    };
    let err = mesh.jobs.submit(bad).await.expect_err("bad id");
    assert_eq!(err.code, ErrorCode::InvalidArgument, "{}", err.message);
}

#[tokio::test]
async fn a_submit_sent_again_dispatches_the_job_a_dead_scheduler_left_unconfirmed() {
    let mesh = mesh();
    let id = ulid::Ulid::new().to_string();
    let request = SubmitJobRequest {
        job_id: id.clone(),
        ..request(&mesh, 2)
    };
    left_mid_submit(&mesh, &id, &request).await;

    // The gateway sends the submit again, to this scheduler.
    let job = mesh.jobs.submit(request).await.expect("sent again");
    assert_eq!(self::id(&job), id);
    assert_eq!(state(&job), JobState::Running);
    let stored = mesh.store.job(&id).expect("stored");
    assert!(!stored.provisional, "confirmed");
    assert_eq!(
        queued_ids(&mesh, &id),
        [nats::task_id(&id, 0, 0), nats::task_id(&id, 1, 0)],
        "both tasks, the one queued before not twice"
    );
}

#[tokio::test]
async fn a_submit_sent_again_that_fails_leaves_the_stored_job_alone() {
    let mesh = mesh();
    let id = ulid::Ulid::new().to_string();
    let request = SubmitJobRequest {
        job_id: id.clone(),
        ..request(&mesh, 2)
    };
    mesh.jobs.submit(request.clone()).await.expect("submit");
    mesh.store.fail_next(
        "get_job",
        pixelmesh_proto::Error::unavailable("storage is away"),
    );
    let err = mesh.jobs.submit(request).await.expect_err("get_job fails");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(
        mesh.store.job(&id).is_some(),
        "not abandoned: it is not this call's"
    );
    assert_eq!(queued_ids(&mesh, &id).len(), 2);
    assert!(mesh.queue.purged().is_empty());
}

#[tokio::test]
async fn a_queue_failure_mid_submit_removes_the_job_and_its_tasks_before_answering() {
    let mesh = mesh();
    mesh.queue.fail_publishes_after(Some(2));
    let err = mesh
        .jobs
        .submit(request(&mesh, 5))
        .await
        .expect_err("third publish fails");
    assert_eq!(err.code, ErrorCode::Unavailable);

    let stored = mesh.queue.stored();
    assert_eq!(stored.len(), 2, "two tasks made it into the stream");
    let id = stored[0].1.job_id.clone();
    assert!(
        mesh.store.job(&id).is_none(),
        "the job is gone from storage"
    );
    assert!(
        queued_ids(&mesh, &id).is_empty(),
        "and its tasks from the stream"
    );
    assert_eq!(mesh.queue.purged(), [id]);
    assert!(
        mesh.queue.progress().is_empty(),
        "watchers never heard of it"
    );
}

#[tokio::test]
async fn a_storage_failure_confirming_the_submit_removes_the_job_and_its_tasks() {
    let mesh = mesh();
    mesh.store.fail_next(
        "mark_job_running",
        pixelmesh_proto::Error::unavailable("storage down"),
    );
    let err = mesh
        .jobs
        .submit(request(&mesh, 2))
        .await
        .expect_err("not confirmed");
    assert_eq!(err.code, ErrorCode::Unavailable);
    let id = mesh.queue.stored()[0].1.job_id.clone();
    assert_eq!(mesh.queue.stored().len(), 2, "every task was published");
    assert!(mesh.store.job(&id).is_none());
    assert!(queued_ids(&mesh, &id).is_empty());
}

// ------------------------------------------------------------------------------ results

#[tokio::test]
async fn results_are_recorded_once_and_the_last_image_finishes_the_job() {
    let mesh = mesh();
    let id = submitted(&mesh, 2).await;
    let events = mesh.queue.progress().len();

    assert!(mesh.jobs.record(done(&id, 0)).await.expect("record"));
    let job = mesh.store.job(&id).expect("job");
    assert_eq!(state(&job), JobState::Running);
    assert_eq!(image_states(&job), [ImageState::Done, ImageState::Pending]);
    assert_eq!(job.images[0].worker_id, "worker-1");
    let progress = mesh.queue.progress();
    assert_eq!(progress.len(), events + 1);
    assert_eq!(progress[events].image.as_ref().map(|i| i.index), Some(0));

    assert!(
        !mesh.jobs.record(failed(&id, 0)).await.expect("duplicate"),
        "a second outcome for image 0 changes nothing"
    );
    assert_eq!(mesh.queue.progress().len(), events + 1, "nor tells anyone");
    assert_eq!(
        image_states(&mesh.store.job(&id).expect("job"))[0],
        ImageState::Done
    );

    assert!(mesh.jobs.record(done(&id, 1)).await.expect("record"));
    assert_eq!(
        state(&mesh.store.job(&id).expect("job")),
        JobState::Completed
    );
    let last = mesh.queue.progress().pop().expect("event");
    assert_eq!(
        last.summary.map(|s| s.state()),
        Some(JobState::Completed),
        "watchers hear the job finish"
    );
}

#[tokio::test]
async fn a_jobs_final_state_follows_its_images_outcomes() {
    for (outcomes, expected) in [
        ([true, true], JobState::Completed),
        ([true, false], JobState::CompletedWithErrors),
        ([false, false], JobState::Failed),
    ] {
        let mesh = mesh();
        let id = submitted(&mesh, 2).await;
        for (index, ok) in outcomes.into_iter().enumerate() {
            let result = if ok { done } else { failed };
            mesh.jobs
                .record(result(&id, index as u32))
                .await
                .expect("record");
        }
        assert_eq!(
            state(&mesh.store.job(&id).expect("job")),
            expected,
            "{outcomes:?}"
        );
    }
}

fn split(job: &str, index: u32, tiles: u32) -> TaskResult {
    let tiles = (0..tiles)
        .map(|tile| TileInput {
            tile,
            core: Some(Rect {
                x: tile * 64,
                y: 0,
                width: 64,
                height: 64,
            }),
            source: None,
            blob_id: format!("tile-in-{tile}"),
        })
        .collect();
    let split = TileSplit {
        width: 64 * 3,
        height: 64,
        input_format: 0,
        tiles,
    };
    outcome(job, index, Outcome::Split(split))
}

fn tile(job: &str, index: u32, tile: u32) -> TaskResult {
    let output = TileOutput {
        tile,
        core: None,
        blob_id: format!("tile-out-{tile}"),
    };
    outcome(job, index, Outcome::Tile(output))
}

#[tokio::test]
async fn a_split_image_gets_one_task_per_tile_then_one_assembly_then_finishes() {
    let mesh = mesh();
    let id = submitted(&mesh, 2).await;
    mesh.queue
        .take(&id, 1)
        .expect("the whole-image task, taken by a worker");

    assert!(mesh.jobs.record(split(&id, 1, 3)).await.expect("split"));
    let tiles: Vec<_> = mesh
        .queue
        .queued(&id)
        .into_iter()
        .filter(|(_, task)| task.index == 1)
        .collect();
    let ids: Vec<&str> = tiles.iter().map(|(id, _)| id.as_str()).collect();
    for t in 0..3 {
        assert!(
            ids.contains(&nats::tile_task_id(&id, 1, t, 0).as_str()),
            "{ids:?}"
        );
    }
    assert_eq!(tiles.len(), 3);
    for (_, task) in &tiles {
        assert!(matches!(task.stage, Some(task::Stage::Tile(_))));
        assert_eq!(
            task.pipeline,
            [grayscale()],
            "tiles carry the job's pipeline"
        );
    }
    let image = &mesh.store.job(&id).expect("job").images[1];
    assert_eq!((image.state(), image.tiles_total), (ImageState::Pending, 3));

    for t in 0..3 {
        mesh.queue.take(&id, 1);
        mesh.jobs.record(tile(&id, 1, t)).await.expect("tile");
        let assembly = mesh
            .queue
            .queued(&id)
            .into_iter()
            .find(|(task_id, _)| *task_id == nats::assemble_task_id(&id, 1, 0));
        assert_eq!(
            assembly.is_some(),
            t == 2,
            "assembly published after tile {t}"
        );
    }
    let (_, assemble) = mesh
        .queue
        .queued(&id)
        .into_iter()
        .find(|(task_id, _)| *task_id == nats::assemble_task_id(&id, 1, 0))
        .expect("assembly");
    let Some(task::Stage::Assemble(plan)) = assemble.stage else {
        panic!("not an assembly: {assemble:?}");
    };
    assert_eq!(plan.tiles.len(), 3);

    mesh.jobs.record(done(&id, 1)).await.expect("assembled");
    mesh.jobs.record(done(&id, 0)).await.expect("whole");
    assert_eq!(
        state(&mesh.store.job(&id).expect("job")),
        JobState::Completed
    );
}

#[tokio::test]
async fn a_repeated_split_or_last_tile_publishes_again_under_the_same_ids_and_records_nothing() {
    // A scheduler may die between recording a split and publishing its tiles: the result
    // comes again, is not recorded again, but its tasks are published again, which the
    // queue's dedup drops if they made it the first time.
    let mesh = mesh();
    let id = submitted(&mesh, 1).await;
    mesh.queue.take(&id, 0);
    mesh.jobs.record(split(&id, 0, 2)).await.expect("split");
    let after_split = mesh.queue.stored().len();
    assert!(!mesh.jobs.record(split(&id, 0, 2)).await.expect("again"));
    assert_eq!(mesh.queue.attempts(&nats::tile_task_id(&id, 0, 1, 0)), 2);
    assert_eq!(
        mesh.queue.stored().len(),
        after_split,
        "no duplicate tile task"
    );

    mesh.jobs.record(tile(&id, 0, 0)).await.expect("tile 0");
    mesh.jobs.record(tile(&id, 0, 1)).await.expect("tile 1");
    let assembly = nats::assemble_task_id(&id, 0, 0);
    mesh.queue.take(&id, 0);
    mesh.queue.take(&id, 0);
    mesh.queue.take(&id, 0);
    assert!(
        mesh.queue.queued(&id).is_empty(),
        "tiles and assembly taken"
    );
    assert!(
        !mesh
            .jobs
            .record(tile(&id, 0, 1))
            .await
            .expect("tile 1 again")
    );
    assert_eq!(
        mesh.queue.attempts(&assembly),
        2,
        "the assembly published again"
    );
    let stored = mesh.queue.stored();
    assert_eq!(
        stored.iter().filter(|(id, _)| *id == assembly).count(),
        1,
        "and dropped as a repeat"
    );
}

#[tokio::test]
async fn results_of_a_cancelled_job_are_ignored_and_a_late_split_queues_no_tiles() {
    let mesh = mesh();
    let id = submitted(&mesh, 2).await;
    mesh.jobs.record(done(&id, 0)).await.expect("record");

    let job = mesh.jobs.cancel(&id).await.expect("cancel");
    assert_eq!(state(&job), JobState::Cancelled);
    assert_eq!(
        image_states(&job),
        [ImageState::Done, ImageState::Cancelled]
    );
    assert!(queued_ids(&mesh, &id).is_empty(), "its queued task purged");
    assert_eq!(
        mesh.queue
            .progress()
            .pop()
            .and_then(|e| e.summary)
            .map(|s| s.state()),
        Some(JobState::Cancelled)
    );

    let stored = mesh.queue.stored().len();
    assert!(
        !mesh
            .jobs
            .record(split(&id, 1, 4))
            .await
            .expect("late split")
    );
    assert!(!mesh.jobs.record(done(&id, 1)).await.expect("late result"));
    assert_eq!(
        mesh.queue.stored().len(),
        stored,
        "nothing published for it"
    );
    assert_eq!(
        state(&mesh.store.job(&id).expect("job")),
        JobState::Cancelled
    );

    let again = mesh
        .jobs
        .cancel(&id)
        .await
        .expect("cancelling twice is fine");
    assert_eq!(state(&again), JobState::Cancelled);
}

#[tokio::test]
async fn an_ended_job_cannot_be_cancelled_paused_or_resumed() {
    let mesh = mesh();
    let id = submitted(&mesh, 1).await;
    mesh.jobs.record(done(&id, 0)).await.expect("record");
    let purges = mesh.queue.purged().len();
    for (what, err) in [
        ("cancel", mesh.jobs.cancel(&id).await.expect_err("ended")),
        ("pause", mesh.jobs.pause(&id).await.expect_err("ended")),
        (
            "resume",
            mesh.jobs.resume(&id).await.expect_err("not paused"),
        ),
        (
            "retry",
            mesh.jobs.retry(&id).await.expect_err("nothing failed"),
        ),
    ] {
        assert_eq!(
            err.code,
            ErrorCode::FailedPrecondition,
            "{what}: {}",
            err.message
        );
    }
    assert_eq!(
        mesh.queue.purged().len(),
        purges,
        "a refused change purges nothing"
    );
    assert_eq!(
        state(&mesh.store.job(&id).expect("job")),
        JobState::Completed
    );
}

// -------------------------------------------------------------------------------- retry

#[tokio::test]
async fn retry_runs_only_the_failed_images_again_under_new_task_ids() {
    let mesh = mesh();
    let id = submitted(&mesh, 3).await;
    for index in 0..3 {
        mesh.queue.take(&id, index);
    }
    mesh.jobs.record(done(&id, 0)).await.expect("record");
    mesh.jobs.record(failed(&id, 1)).await.expect("record");
    mesh.jobs.record(failed(&id, 2)).await.expect("record");
    let job = mesh.store.job(&id).expect("job");
    assert_eq!(state(&job), JobState::CompletedWithErrors);
    assert_eq!(job.images[1].attempts, 2);

    let job = mesh.jobs.retry(&id).await.expect("retry");
    assert_eq!(state(&job), JobState::Running);
    assert_eq!(job.generation, 1);
    assert_eq!(
        image_states(&job),
        [ImageState::Done, ImageState::Pending, ImageState::Pending]
    );
    assert_eq!(
        queued_ids(&mesh, &id),
        [nats::task_id(&id, 1, 1), nats::task_id(&id, 2, 1)],
        "new ids, or the dedup window would drop them"
    );
    let retried = &mesh.store.job(&id).expect("job").images[1];
    assert_eq!((retried.attempts, retried.error.as_str()), (0, ""));

    mesh.jobs.record(done(&id, 1)).await.expect("record");
    mesh.jobs.record(done(&id, 2)).await.expect("record");
    let job = mesh.store.job(&id).expect("job");
    assert_eq!(state(&job), JobState::Completed);
    assert_eq!(
        job.images[0].output.as_ref().map(|o| o.blob_id.as_str()),
        Some("out-0")
    );
}

#[tokio::test]
async fn retry_is_refused_while_a_job_runs_and_for_a_cancelled_one() {
    let mesh = mesh();
    let id = submitted(&mesh, 2).await;
    mesh.jobs.record(failed(&id, 0)).await.expect("record");
    let err = mesh.jobs.retry(&id).await.expect_err("still running");
    assert_eq!(err.code, ErrorCode::FailedPrecondition);

    mesh.jobs.cancel(&id).await.expect("cancel");
    let stored = mesh.queue.stored().len();
    let err = mesh.jobs.retry(&id).await.expect_err("cancelled");
    assert_eq!(err.code, ErrorCode::FailedPrecondition);
    assert_eq!(mesh.queue.stored().len(), stored);
}

// ------------------------------------------------------------------------ pause, resume

#[tokio::test]
async fn a_paused_job_is_not_dispatched_until_resumed_under_a_new_generation() {
    let mesh = mesh();
    let id = submitted(&mesh, 3).await;
    // A worker holds image 0's task: it still finishes while the job is paused.
    mesh.queue.take(&id, 0);

    let job = mesh.jobs.pause(&id).await.expect("pause");
    assert_eq!(state(&job), JobState::Paused);
    assert!(queued_ids(&mesh, &id).is_empty(), "queued tasks purged");
    let stored = mesh.queue.stored().len();
    mesh.jobs.reconcile().await.expect("reconcile");
    assert_eq!(
        mesh.queue.stored().len(),
        stored,
        "reconciliation leaves it alone"
    );
    assert!(mesh.jobs.record(done(&id, 0)).await.expect("record"));
    assert_eq!(
        state(&mesh.store.job(&id).expect("job")),
        JobState::Paused,
        "a result does not unpause it"
    );
    let again = mesh.jobs.pause(&id).await.expect("pausing twice is fine");
    assert_eq!(state(&again), JobState::Paused);

    let job = mesh.jobs.resume(&id).await.expect("resume");
    assert_eq!((state(&job), job.generation), (JobState::Running, 1));
    assert_eq!(
        queued_ids(&mesh, &id),
        [nats::task_id(&id, 1, 1), nats::task_id(&id, 2, 1)],
        "only the pending images, under ids the dedup window has not seen"
    );
}

#[tokio::test]
async fn a_resumed_tiled_image_starts_over_from_its_split() {
    let mesh = mesh();
    let id = submitted(&mesh, 1).await;
    mesh.queue.take(&id, 0);
    mesh.jobs.record(split(&id, 0, 2)).await.expect("split");
    mesh.jobs.record(tile(&id, 0, 0)).await.expect("tile");
    mesh.jobs.pause(&id).await.expect("pause");

    let job = mesh.jobs.resume(&id).await.expect("resume");
    assert_eq!(
        (job.images[0].tiles_total, job.images[0].tiles_done),
        (0, 0)
    );
    let queued = mesh.queue.queued(&id);
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].0, nats::task_id(&id, 0, 1));
    assert!(
        queued[0].1.stage.is_none(),
        "the whole image again, to split"
    );
    // The old split's tiles are forgotten: a late tile result of it is refused.
    let err = mesh
        .jobs
        .record(tile(&id, 0, 1))
        .await
        .expect_err("stale tile");
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

// ------------------------------------------------------------------------ reconciliation

#[tokio::test]
async fn reconciliation_requeues_a_running_jobs_lost_tasks_and_leaves_the_rest() {
    let mesh = mesh();
    let id = submitted(&mesh, 4).await;
    // 0: a worker took it and died; 1: still queued; 2: its result waits in RESULTS;
    // 3: done.
    mesh.queue.take(&id, 0);
    mesh.queue.take(&id, 2);
    mesh.queue.result_waiting(&id, 2);
    mesh.queue.take(&id, 3);
    mesh.jobs.record(done(&id, 3)).await.expect("record");
    let before = mesh.queue.stored().len();

    mesh.jobs.reconcile().await.expect("reconcile");
    let published: Vec<_> = mesh.queue.stored().split_off(before);
    assert_eq!(published.len(), 1, "{published:?}");
    let (task_id, task) = &published[0];
    assert_eq!(task.index, 0);
    assert!(
        task_id.starts_with(&format!("{}.r", nats::task_id(&id, 0, 0))),
        "a fresh dedup id: {task_id}"
    );
    assert_eq!(state(&mesh.store.job(&id).expect("job")), JobState::Running);

    // Once the lost task is back, another pass changes nothing.
    mesh.jobs.reconcile().await.expect("reconcile");
    assert_eq!(mesh.queue.stored().len(), before + 1);
}

#[tokio::test]
async fn reconciliation_fails_images_whose_task_ran_out_of_deliveries_so_the_job_finishes() {
    let mesh = mesh();
    let id = submitted(&mesh, 2).await;
    mesh.queue.take(&id, 0);
    mesh.jobs.record(done(&id, 0)).await.expect("record");
    mesh.queue.exhaust(&id, 1, 5);

    mesh.jobs.reconcile().await.expect("reconcile");
    let job = mesh.store.job(&id).expect("job");
    assert_eq!(state(&job), JobState::CompletedWithErrors);
    assert!(
        job.images[1]
            .error
            .starts_with("gave up after 5 deliveries"),
        "{}",
        job.images[1].error
    );
}

#[tokio::test]
async fn reconciliation_removes_a_stale_provisional_job_with_its_tasks_but_not_a_young_one() {
    let mesh = mesh();
    let id = ulid::Ulid::new().to_string();
    left_mid_submit(&mesh, &id, &request(&mesh, 2)).await;

    mesh.jobs.reconcile().await.expect("reconcile");
    assert!(
        mesh.store.job(&id).is_some(),
        "young: maybe a submit in progress"
    );
    assert_eq!(queued_ids(&mesh, &id).len(), 1);

    mesh.store.edit(&id, |job| {
        let summary = job.summary.as_mut().expect("summary");
        summary.created_at_ms -= PROVISIONAL_TTL.as_millis() as i64;
    });
    mesh.jobs.reconcile().await.expect("reconcile");
    assert!(mesh.store.job(&id).is_none(), "abandoned");
    assert!(queued_ids(&mesh, &id).is_empty(), "with its tasks");
}

#[tokio::test]
async fn reconciliation_dispatches_a_job_left_queued_by_a_failed_retry() {
    let mesh = mesh();
    let id = submitted(&mesh, 1).await;
    mesh.queue.take(&id, 0);
    mesh.jobs.record(failed(&id, 0)).await.expect("record");
    mesh.queue.fail_publishes_after(Some(0));
    mesh.jobs.retry(&id).await.expect_err("queue down");
    assert_eq!(state(&mesh.store.job(&id).expect("job")), JobState::Queued);

    mesh.queue.fail_publishes_after(None);
    mesh.jobs.reconcile().await.expect("reconcile");
    assert_eq!(state(&mesh.store.job(&id).expect("job")), JobState::Running);
    assert_eq!(queued_ids(&mesh, &id), [nats::task_id(&id, 0, 1)]);
}

#[tokio::test]
async fn reconciliation_skips_a_job_removed_after_it_was_listed() {
    let mesh = mesh();
    submitted(&mesh, 1).await;
    submitted(&mesh, 1).await;
    // Listed oldest first, by id.
    let [gone, other] = <[String; 2]>::try_from(mesh.store.job_ids()).expect("two jobs");
    mesh.queue.take(&gone, 0);
    mesh.queue.take(&other, 0);
    // The first job listed is deleted between the listing and its read.
    mesh.store.fail_next(
        "get_job",
        pixelmesh_proto::Error::not_found("job not found"),
    );

    mesh.jobs
        .reconcile()
        .await
        .expect("a job gone is no failure");
    assert!(mesh.queue.queued(&gone).is_empty(), "nothing queued for it");
    assert_eq!(
        mesh.queue.queued(&other).len(),
        1,
        "the next job is still reconciled"
    );
}
