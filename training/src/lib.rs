//! `training`: libtorch models, the paper's objectives, the fit loop and checkpoints.
