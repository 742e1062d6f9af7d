//! `training`: libtorch models, the paper's objectives, the fit loop and checkpoints.

pub mod amp;
pub mod data;
pub mod device;
pub mod fit;
pub mod metrics_log;
pub mod model;
pub mod objectives;
pub mod optim;
pub mod probe;
pub mod reference;
pub mod trainer_state;
pub mod weights;

pub use model::Model;
