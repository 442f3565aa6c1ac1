//! Home of pgstepup's benchmarks: criterion benches of the per-statement hot path
//! (`cargo bench -p pgstepup-benches`) and, in `load/`, the pgbench harness that compares
//! pgstepup with a direct connection and with pgbouncer; `miss_instructions.py` counts a
//! classification miss against sqlparser's own parse with callgrind (`examples/miss_cost.rs`).
