//! End-to-end tests across the exports, engine and training crates and binaries.

mod greedy;
mod parity;
mod pipeline;
