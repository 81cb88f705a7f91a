//! fastnn trains multi-layer perceptrons on the CPU, from scratch.
//!
//! Architecture, bottom-up (see `DESIGN.md` in the design notes):
//!
//! - [`buf`]: 64-byte aligned buffers; [`atomic`]: files written whole or
//!   not at all; [`tensorfile`]: aligned safetensors files.
//! - [`cpu`]: CPU feature detection, done once, with the `FASTNN_ISA` override.
//! - [`gemm`]: the packed, runtime-dispatched single-precision matrix product.
//! - [`model`], [`ops`], [`net`]: the MLP, its layer math and one training
//!   step (forward, fused loss, backward) on the GEMM engine.
//! - [`optim`]: SGD and Adam over flat parameter slabs; [`rng`]: the seeded
//!   generator.
//! - [`train`]: the epoch loop, running a [`config::TrainConfig`], in one
//!   process or as one of the ranks of [`distributed`] data parallelism;
//!   [`checkpoint`]: model files and checkpoints;
//!   [`workload`]: the benchmark workloads; [`plot`]: pictures.
//! - [`data`]: the dataset file (a safetensors file, memory-mapped) and the
//!   converters that produce it from CIFAR tarballs, IDX files and CSV tables;
//!   datasets over samples held in memory (the Python package's arrays).
//! - [`reference`](mod@reference) and [`autograd`]: two independent f64 oracles for the
//!   gradients, written to be read.
//!
//! The library never depends on the command-line parser; the `fastnn` binary
//! is glue around it.

pub mod atomic;
pub mod autograd;
pub mod buf;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod data;
pub mod distributed;
pub mod gemm;
pub mod model;
pub mod net;
pub mod norm;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod reference;
pub mod rng;
pub mod rss;
pub mod team;
pub mod tensorfile;
pub mod train;
pub mod workload;
