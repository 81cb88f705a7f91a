//! CPU feature detection, done once per process.
//!
//! [`selected`] picks the GEMM kernel family ([`Isa`]) the first time it is
//! called: the `FASTNN_ISA` environment variable if set
//! (`avx512|avx2|scalar|matrixmultiply`), else the best this CPU supports. The
//! choice is logged once to stderr, e.g.
//! `fastnn: gemm kernel avx512 (detected: avx512f avx2 fma)`, and cached in a
//! [`OnceLock`]. An override naming an unknown kernel, or one the CPU cannot
//! run, is refused with an error (`FASTNN_ISA=avx512: gemm kernel avx512 is
//! not supported by this CPU ...`), never silently downgraded; the `fastnn`
//! command checks it ([`check_env`]) before running any subcommand.
//!
//! Tests and benchmarks that need one specific kernel do not touch the
//! environment (tests run in parallel threads of one process): they pass an
//! [`Isa`] per call (see `gemm::GemmCtx::with_isa`), checked with
//! [`Isa::check`].

use std::env::VarError;
use std::fmt;
use std::sync::{Once, OnceLock};

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
    /// The `FASTNN_ISA` environment variable holds `value`, refused for
    /// `reason`.
    Env {
        value: String,
        reason: Box<IsaError>,
    },
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
            IsaError::Env { value, reason } => {
                write!(f, "FASTNN_ISA={}: {reason}", value.escape_debug())
            }
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

/// The `FASTNN_ISA` choice, decided once and not logged.
fn choice() -> &'static Result<Isa, IsaError> {
    static CHOICE: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let refused = |value: String, reason: IsaError| IsaError::Env {
            value,
            reason: Box::new(reason),
        };
        match std::env::var("FASTNN_ISA") {
            Err(VarError::NotPresent) => Ok(Isa::best_available()),
            Ok(v) if v.trim().is_empty() => Ok(Isa::best_available()),
            Ok(v) => Isa::parse(&v)
                .and_then(Isa::check)
                .map_err(|e| refused(v, e)),
            Err(VarError::NotUnicode(raw)) => {
                let v = raw.to_string_lossy().into_owned();
                Err(refused(v.clone(), IsaError::Unknown(v)))
            }
        }
    })
}

/// Checks `FASTNN_ISA` without logging anything: the `fastnn` command calls
/// it before running any subcommand, so that a bad value is refused the same
/// way everywhere (one error line, exit 1), whether or not the subcommand
/// multiplies matrices.
pub fn check_env() -> Result<Isa, IsaError> {
    choice().clone()
}

/// The process-wide kernel choice: `FASTNN_ISA` if set, else the best
/// available. Decided once; a successful choice is logged to stderr the
/// first time it is asked for. A refusal is not logged: the caller reports
/// the error.
pub fn try_selected() -> Result<Isa, IsaError> {
    static LOGGED: Once = Once::new();
    let choice = choice().clone();
    if let Ok(isa) = &choice {
        LOGGED.call_once(|| eprintln!("fastnn: gemm kernel {isa} (detected: {})", features()));
    }
    choice
}

/// Like [`try_selected`], but panics with the refusal message. For tests and
/// examples; code reachable from a command uses [`try_selected`].
pub fn selected() -> Isa {
    try_selected().unwrap_or_else(|e| panic!("{e}"))
}

/// Says on stdout that a check could not run on this CPU. Written to the
/// stream itself, not with `println!`, which the test harness captures:
/// `cargo test` shows the line.
#[cfg(test)]
pub(crate) fn report_skipped(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "SKIPPED: {what}: {why}");
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
