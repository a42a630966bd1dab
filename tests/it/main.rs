//! One integration-test binary (each file under tests/ links the whole stack).

mod azure;
mod cases;
mod cli;
mod common;
mod errors;
mod fan_out;
mod formats;
mod fuzz;
mod generate;
mod golden;
mod lifecycle;
mod organizations_file;
mod properties;
mod query;
mod rejects;
mod s3;
mod serve;
mod stages;
