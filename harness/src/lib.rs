//! hubtrust's engine: stacks of real JupyterHub components on a backend,
//! PKI, TLS probes, the trust matrix and reports. Knows nothing of Gherkin.

pub mod backend;
pub mod capture;
pub mod component;
pub mod diagnosis;
pub mod doctor;
pub mod enterprise;
pub mod error;
pub mod hpc;
pub mod hub_api;
pub mod images;
pub mod inventory;
pub mod known_defects;
pub mod lab;
pub mod matrix;
pub mod pki;
pub mod probe;
pub mod probe_deployment;
pub mod process;
pub mod provision;
pub mod reachability;
pub mod ready;
pub mod repeat;
pub mod report;
pub mod secret;
pub mod spec;
pub mod stack;
pub mod tls_policy;
pub mod tls_scan;
pub mod trust;
pub mod under_test;
pub mod workdir;

pub use error::{HarnessError, Result};
pub use stack::Stack;
