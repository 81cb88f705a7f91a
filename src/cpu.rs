//! CPU feature detection, done once per process.
//!
//! [`selected`] picks the GEMM kernel family ([`Isa`]) the first time it is
//! called: the `FASTNN_ISA` environment variable if set
//! (`avx512|avx2|scalar|matrixmultiply`), else the best this CPU supports. The
//! choice is logged once to stderr, e.g.
//! `fastnn: gemm kernel avx512 (detected: avx512f avx2 fma)`, and cached in a
//! [`OnceLock`]. An override naming a kernel the CPU cannot run is refused
//! with an error, never silently downgraded.
//!
//! Tests and benchmarks that need one specific kernel do not touch the
//! environment (tests run in parallel threads of one process): they pass an
//! [`Isa`] per call (see `gemm::GemmCtx::with_isa`), checked with
//! [`Isa::check`].

use std::fmt;
use std::sync::OnceLock;

/// A family of GEMM microkernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// AVX-512F kernels (x86-64 only).
    Avx512,
    /// AVX2 + FMA kernels (x86-64 only).
    Avx2,
    /// Portable kernels in plain Rust: every target.
    Scalar,
    /// The `matrixmultiply` crate, single-threaded: every target.
    MatrixMultiply,
}

impl Isa {
    /// Every kernel family, fastest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Scalar, Isa::MatrixMultiply];

    /// The name used by `FASTNN_ISA` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
            Isa::MatrixMultiply => "matrixmultiply",
        }
    }

    /// Parses a `FASTNN_ISA` value (case-insensitive).
    pub fn parse(s: &str) -> Result<Isa, IsaError> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| IsaError::Unknown(s.to_string()))
    }

    /// True when this CPU can run the kernel family.
    pub fn is_available(self) -> bool {
        let f = features();
        match self {
            Isa::Avx512 => f.avx512f && f.avx2 && f.fma,
            Isa::Avx2 => f.avx2 && f.fma,
            Isa::Scalar | Isa::MatrixMultiply => true,
        }
    }

    /// `Ok(self)` when the CPU can run it, else an error naming what is missing.
    pub fn check(self) -> Result<Isa, IsaError> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(IsaError::Unsupported {
                isa: self,
                detected: features().to_string(),
            })
        }
    }

    /// The fastest kernel family this CPU supports.
    pub fn best_available() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Scalar)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a kernel family cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsaError {
    /// The name is not one of `avx512|avx2|scalar|matrixmultiply`.
    Unknown(String),
    /// The CPU lacks the instructions the kernel needs.
    Unsupported { isa: Isa, detected: String },
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(s) => write!(
                f,
                "unknown gemm kernel {s:?}: expected one of avx512, avx2, scalar, matrixmultiply"
            ),
            IsaError::Unsupported { isa, detected } => write!(
                f,
                "gemm kernel {isa} is not supported by this CPU (detected: {detected}); \
                 unset FASTNN_ISA or pick a supported kernel"
            ),
        }
    }
}

impl std::error::Error for IsaError {}

/// The CPU features fastnn cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx512f: bool,
    pub avx2: bool,
    pub fma: bool,
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.avx512f, "avx512f"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(" "))
        }
    }
}

/// The CPU features, detected once.
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    Features {
        avx512f: is_x86_feature_detected!("avx512f"),
        avx2: is_x86_feature_detected!("avx2"),
        fma: is_x86_feature_detected!("fma"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// The process-wide kernel choice: `FASTNN_ISA` if set, else the best
/// available. Decided and logged once.
pub fn try_selected() -> Result<Isa, IsaError> {
    static SELECTED: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
    SELECTED
        .get_or_init(|| {
            let choice = match std::env::var("FASTNN_ISA") {
                Ok(v) if !v.trim().is_empty() => Isa::parse(&v).and_then(Isa::check),
                _ => Ok(Isa::best_available()),
            };
            match &choice {
                Ok(isa) => eprintln!("fastnn: gemm kernel {isa} (detected: {})", features()),
                Err(e) => eprintln!("fastnn: FASTNN_ISA refused: {e}"),
            }
            choice
        })
        .clone()
}

/// Like [`try_selected`], but panics with the refusal message.
pub fn selected() -> Isa {
    try_selected().unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert_eq!(Isa::parse("AVX2"), Ok(Isa::Avx2));
        assert!(matches!(Isa::parse("sse"), Err(IsaError::Unknown(_))));
    }

    #[test]
    fn portable_always_available() {
        assert!(Isa::Scalar.is_available());
        assert!(Isa::MatrixMultiply.is_available());
        assert!(Isa::best_available().is_available());
    }

    #[test]
    fn missing_isa_is_refused_not_downgraded() {
        for isa in Isa::ALL {
            match isa.check() {
                Ok(i) => assert_eq!(i, isa),
                Err(e) => assert!(e.to_string().contains("not supported")),
            }
        }
    }
}
