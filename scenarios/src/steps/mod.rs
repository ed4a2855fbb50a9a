//! Step definitions, one file per domain concept. Steps parse, call one
//! harness API, and assert; nothing else lives here.

pub mod enterprise;
pub mod hpc;
pub mod reach_matrix;
pub mod reachability;
pub mod secrets;
pub mod stack;
pub mod tls;
pub mod trust;
pub mod wire;
