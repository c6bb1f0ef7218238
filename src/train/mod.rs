//! Consistency training (ALGORITHM.md sections 2 and 3): Jacobi trajectories of the target
//! model, then fine-tuning so that from any state of a trajectory the model predicts its fixed
//! point, which makes Jacobi decoding fix several tokens per pass.
//!
//! trajectories -> dataset -> (batch -> llama -> loss) -> adamw -> checkpoint / model folder
//! [`job`] runs the whole of it for the app: measure, collect, train, measure again.

pub mod adamw;
pub mod batch;
pub mod checkpoint;
pub mod dataset;
pub mod job;
pub mod llama;
pub mod loss;
pub mod trainer;
pub mod trajectory;

pub use job::{Job, JobEvent, JobSettings, JobStore, Plan};
pub use loss::LossKind;
pub use trainer::{profile, train, Profile, StepStats, TrainEvent, TrainOutcome, TrainSettings};
pub use trajectory::{
    collect_all, CollectConfig, CollectProgress, FileSettings, Record, TrajectoryWriter,
};
