//! The engine layer: the DataFusion-level machinery that stage kinds and the execution of
//! streams build on. It imports nothing else from billflow, so it reads (and could be
//! reused) on its own:
//!
//! - [`session`]: the runtime (memory pool, spill) and the per-stream session: settings,
//!   billflow's query planner (one extension planner per node type) and the exact money
//!   functions registered for SQL;
//! - [`materialize`]: a plan a stage reads twice, computed once (in memory, spilled past the limit);
//! - [`operator`]: the one shape of billflow's physical operators (`BatchExec`);
//! - [`lookup`]: rows looked up in a table with one row per key, passed on uncopied;
//! - [`tap`]: the counting checkpoint; [`residue`]: penny-residue assignment;
//! - [`money`]: exact Decimal128 kernels and their UDFs;
//! - [`side`]: refused rows and removed-row counts that stages leave beside their output;
//! - [`interop`]: Arrow <-> Polars through the C Data Interface;
//! - [`text_scan`]: CSV and NDJSON read so that an unreadable line is a refused row;
//! - [`text_checks`]: text a cast would change silently (too many places, a date not `YYYY-MM-DD`).

pub mod interop;
pub mod lookup;
pub mod materialize;
pub mod money;
pub mod operator;
pub mod residue;
pub mod session;
pub mod side;
pub mod tap;
pub mod text_checks;
pub mod text_scan;
