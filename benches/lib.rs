//! Home of pgstepup's benchmarks: criterion benches of the per-statement hot path
//! (`cargo bench -p pgstepup-benches`) and, in `load/`, the pgbench harness that compares
//! pgstepup with a direct connection and with pgbouncer.
