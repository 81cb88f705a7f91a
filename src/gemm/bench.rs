//! GEMM benchmark logic (being written).
