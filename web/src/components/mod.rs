//! The pages (`new_job`, `jobs`, `job_detail`, `dashboard`) and the pieces they share.

pub mod api_key;
pub mod app;
pub mod dashboard;
pub mod error_line;
pub mod file_picker;
pub mod job_detail;
pub mod jobs;
pub mod new_job;
pub mod pipeline_builder;
pub mod progress;
pub mod state_badge;
pub mod table_head;
pub mod throughput_chart;
