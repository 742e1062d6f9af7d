//! `training`: libtorch models, the paper's objectives, the fit loop and checkpoints.

pub mod device;
pub mod model;
pub mod objectives;
pub mod probe;
pub mod weights;

pub use model::Model;
