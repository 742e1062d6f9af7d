//! `pco`: the iteration loop of Pairwise Cringe Optimization as one program. One settings file
//! ([`settings`]) describes the run; [`stages::plan`] turns it into the stage list once; the local
//! [`runner`] executes that list resumably and [`slurm`] submits the same list as jobs.

pub mod heldback;
pub mod runner;
pub mod settings;
pub mod slurm;
pub mod stages;
