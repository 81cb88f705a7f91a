//! (being written) the GEMM engine.
