//! Wire types shared by every pixelmesh service.
//!
//! * [`v1`] — the generated `pixelmesh.v1` messages, clients and servers;
//! * [`error`] — the one error vocabulary, mapped once to gRPC and HTTP status codes;
//! * [`FILE_DESCRIPTOR_SET`] — what gRPC server reflection serves.

pub mod error;

pub use error::{Error, ErrorCode};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("pixelmesh.v1");
}

/// Most tiles one image is cut into: the filter plans splits within it and storage refuses a
/// split with more (a 100-megapixel image in 256 x 256 tiles makes about 1500).
pub const MAX_TILES: u32 = 4096;

/// Encoded descriptors of every `pixelmesh.v1` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pixelmesh_descriptor");

use v1::{ImageState, JobState};

impl JobState {
    /// True once nothing more can happen to the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::CompletedWithErrors
                | JobState::Failed
                | JobState::Cancelled
        )
    }

    /// Every state a job can be in (`Unspecified` is only an unset field), in the order
    /// the API lists them.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Paused,
        JobState::Completed,
        JobState::CompletedWithErrors,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The lowercase name used in REST, logs and the CLI.
    pub fn label(self) -> &'static str {
        match self {
            JobState::Unspecified => "unspecified",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::CompletedWithErrors => "completed_with_errors",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Paused => "paused",
        }
    }
}

impl ImageState {
    pub fn label(self) -> &'static str {
        match self {
            ImageState::Unspecified => "unspecified",
            ImageState::Pending => "pending",
            ImageState::Done => "done",
            ImageState::Failed => "failed",
            ImageState::Cancelled => "cancelled",
        }
    }
}
