//! CPU feature detection, done once per process.
//!
//! Two kernel choices are made the first time they are asked for: the f32
//! GEMM kernel family ([`Isa`], by [`selected`]) and the bf16 microkernel
//! ([`Bf16Kernel`], by [`selected_bf16`]). Each is the best this CPU
//! supports unless the `FASTNN_ISA` environment variable names it.
//! `FASTNN_ISA` is a comma-separated list of at most one f32 kernel
//! (`avx512|avx2|scalar|matrixmultiply`) and at most one bf16 kernel
//! (`bf16-portable|avx512-bf16`), in any order, case-insensitive, spaces
//! around names ignored: `FASTNN_ISA=avx2`, `FASTNN_ISA=bf16-portable`,
//! `FASTNN_ISA="bf16-portable, scalar"`. A kind not named keeps its default;
//! an empty value means both defaults.
//!
//! Each choice is logged once to stderr, e.g.
//! `fastnn: gemm kernel avx512 (detected: avx512f avx512bf16 avx2 fma)` and
//! `fastnn: bf16 kernel avx512-bf16 (detected: ...)`, and cached in a
//! [`OnceLock`]. A bad value is refused as a whole with one error, never
//! silently downgraded: an unknown name, two kernels of one kind
//! (`avx2,avx512`), an empty item (`avx2,,`), or a kernel the CPU cannot run
//! (`FASTNN_ISA=avx512: gemm kernel avx512 is not supported by this CPU
//! ...`). The `fastnn` command checks it ([`check_env`]) before running any
//! subcommand.
//!
//! Tests and benchmarks that need one specific kernel do not touch the
//! environment (tests run in parallel threads of one process): they pass an
//! [`Isa`] per call (see `gemm::GemmCtx::with_isa`), checked with
//! [`Isa::check`], or a [`Bf16Kernel`], checked with [`check_bf16`].

use std::env::VarError;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};

use crate::gemm::bf16::Bf16Kernel;

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
    /// An item of `FASTNN_ISA` names neither a gemm nor a bf16 kernel.
    UnknownKernel(String),
    /// `FASTNN_ISA` names two kernels of one kind (`kind` is "gemm" or
    /// "bf16"), `first` and then `second`.
    Twice {
        kind: &'static str,
        first: &'static str,
        second: &'static str,
    },
    /// `FASTNN_ISA` has an empty item (`avx2,,`, a leading or trailing comma).
    EmptyItem,
    /// The CPU lacks the instructions the kernel needs.
    Unsupported { isa: Isa, detected: String },
    /// The CPU lacks the instructions the bf16 kernel needs.
    Bf16Unsupported {
        kernel: Bf16Kernel,
        detected: String,
    },
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
            IsaError::UnknownKernel(s) => write!(
                f,
                "unknown kernel {s:?}: expected gemm kernels {} and/or bf16 kernels {}, \
                 separated by a comma",
                Isa::ALL.map(Isa::name).join(", "),
                Bf16Kernel::ALL.map(Bf16Kernel::name).join(", "),
            ),
            IsaError::Twice {
                kind,
                first,
                second,
            } => write!(
                f,
                "two {kind} kernels, {first} and {second}: name at most one gemm kernel \
                 and one bf16 kernel"
            ),
            IsaError::EmptyItem => f.write_str(
                "empty item: expected kernel names separated by single commas, \
                 with none before the first or after the last",
            ),
            IsaError::Unsupported { isa, detected } => write!(
                f,
                "gemm kernel {isa} is not supported by this CPU (detected: {detected}); \
                 unset FASTNN_ISA or pick a supported kernel"
            ),
            IsaError::Bf16Unsupported { kernel, detected } => write!(
                f,
                "bf16 kernel {} is not supported by this CPU (detected: {detected}); \
                 unset FASTNN_ISA or pick a supported kernel",
                kernel.name()
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
    pub avx512bf16: bool,
    pub avx2: bool,
    pub fma: bool,
    /// AMX's tiles and its bf16 tile product (CPUID leaf 7, EDX bits 24
    /// and 22): the `amx-bf16` kernel's ([`crate::gemm::amx`]).
    pub amx_tile: bool,
    pub amx_bf16: bool,
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.avx512f, "avx512f"),
            (self.avx512bf16, "avx512bf16"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.amx_tile, "amx-tile"),
            (self.amx_bf16, "amx-bf16"),
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
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    // std's detection macro has no stable AMX names: CPUID leaf 7,
    // subleaf 0, EDX bit 24 (AMX-TILE) and bit 22 (AMX-BF16), where the
    // CPU has that leaf.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only where
    // the highest leaf says it exists.
    let edx = unsafe {
        if __get_cpuid_max(0).0 >= 7 {
            __cpuid_count(7, 0).edx
        } else {
            0
        }
    };
    Features {
        avx512f: is_x86_feature_detected!("avx512f"),
        avx512bf16: is_x86_feature_detected!("avx512bf16"),
        avx2: is_x86_feature_detected!("avx2"),
        fma: is_x86_feature_detected!("fma"),
        amx_tile: edx >> 24 & 1 == 1,
        amx_bf16: edx >> 22 & 1 == 1,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// True where the fused update's weights and moments (and a tile's C rows)
/// are better prefetched into L1 than into L2, a tile ahead of their
/// store: AMD's Zen 5 (family 1Ah) and later, where it measured faster
/// (W1's bf16 weight gradients 5–10 %, f32 2–4 %). On Zen 4 (family 19h)
/// it measured 7 % slower, and the Intel Xeons were not measured: they
/// keep L2.
pub fn prefetch_stores_into_l1() -> bool {
    static INTO_L1: OnceLock<bool> = OnceLock::new();
    *INTO_L1.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            #[allow(unused_unsafe)]
            // SAFETY: CPUID leaves 0 and 1 exist on every x86-64 CPU.
            let (vendor, signature) = unsafe {
                let v = __cpuid(0);
                ([v.ebx, v.edx, v.ecx], __cpuid(1).eax)
            };
            zen5_or_later(vendor, signature)
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// CPUID's vendor words (leaf 0: EBX, EDX, ECX) of AMD.
const AMD: [u32; 3] = vendor_words(b"AuthenticAMD");

/// A vendor string as CPUID's leaf 0 gives it: three little-endian words.
const fn vendor_words(s: &[u8; 12]) -> [u32; 3] {
    let mut words = [0; 3];
    let mut i = 0;
    while i < 3 {
        words[i] = u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        i += 1;
    }
    words
}

/// True for an AMD CPU of family 1Ah or later, from CPUID's vendor words
/// and leaf 1's signature (EAX): the family is the base field, plus the
/// extended one where the base is 0Fh.
fn zen5_or_later(vendor: [u32; 3], signature: u32) -> bool {
    let base = signature >> 8 & 0xF;
    let family = if base == 0xF {
        base + (signature >> 20 & 0xFF)
    } else {
        base
    };
    vendor == AMD && family >= 0x1A
}

/// `Ok(kernel)` when the CPU can run the bf16 kernel, else an error naming
/// what was detected.
pub fn check_bf16(kernel: Bf16Kernel) -> Result<Bf16Kernel, IsaError> {
    if kernel.is_available() {
        Ok(kernel)
    } else {
        Err(IsaError::Bf16Unsupported {
            kernel,
            detected: features().to_string(),
        })
    }
}

/// The kernels a `FASTNN_ISA` value names: `None` for a kind it leaves to
/// the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsaOverride {
    pub gemm: Option<Isa>,
    pub bf16: Option<Bf16Kernel>,
}

impl IsaOverride {
    /// Parses a `FASTNN_ISA` value: kernel names separated by commas, at
    /// most one of each kind, in any order, case-insensitive, spaces around
    /// names ignored. An empty (or blank) value names nothing. Whether the
    /// CPU runs them is not checked here (see [`IsaOverride::resolve`]).
    pub fn parse(value: &str) -> Result<IsaOverride, IsaError> {
        let mut chosen = IsaOverride::default();
        if value.trim().is_empty() {
            return Ok(chosen);
        }
        for item in value.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(IsaError::EmptyItem);
            }
            let named = |name: &str| name.eq_ignore_ascii_case(item);
            if let Some(isa) = Isa::ALL.into_iter().find(|i| named(i.name())) {
                if let Some(first) = chosen.gemm.replace(isa) {
                    return Err(IsaError::Twice {
                        kind: "gemm",
                        first: first.name(),
                        second: isa.name(),
                    });
                }
            } else if let Some(k) = Bf16Kernel::ALL.into_iter().find(|k| named(k.name())) {
                if let Some(first) = chosen.bf16.replace(k) {
                    return Err(IsaError::Twice {
                        kind: "bf16",
                        first: first.name(),
                        second: k.name(),
                    });
                }
            } else {
                return Err(IsaError::UnknownKernel(item.to_string()));
            }
        }
        Ok(chosen)
    }

    /// The kernels to use: the ones named, each checked against this CPU,
    /// and the best available for a kind not named.
    pub fn resolve(self) -> Result<(Isa, Bf16Kernel), IsaError> {
        let gemm = self
            .gemm
            .map_or_else(|| Ok(Isa::best_available()), Isa::check)?;
        let bf16 = self
            .bf16
            .map_or_else(|| Ok(Bf16Kernel::detect()), check_bf16)?;
        Ok((gemm, bf16))
    }
}

/// The `FASTNN_ISA` choice of both kernels, decided once and not logged.
fn choice() -> &'static Result<(Isa, Bf16Kernel), IsaError> {
    static CHOICE: OnceLock<Result<(Isa, Bf16Kernel), IsaError>> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let refused = |value: String, reason: IsaError| IsaError::Env {
            value,
            reason: Box::new(reason),
        };
        match std::env::var("FASTNN_ISA") {
            Err(VarError::NotPresent) => IsaOverride::default().resolve(),
            Ok(v) => IsaOverride::parse(&v)
                .and_then(IsaOverride::resolve)
                .map_err(|e| refused(v, e)),
            Err(VarError::NotUnicode(raw)) => {
                let v = raw.to_string_lossy().into_owned();
                Err(refused(v.clone(), IsaError::UnknownKernel(v)))
            }
        }
    })
}

/// Checks `FASTNN_ISA` (both kinds of kernel) without logging anything: the
/// `fastnn` command calls it before running any subcommand, so that a bad
/// value is refused the same way everywhere (one error line, exit 1),
/// whether or not the subcommand multiplies matrices. Returns the gemm
/// kernel family and the bf16 kernel.
pub fn check_env() -> Result<(Isa, Bf16Kernel), IsaError> {
    choice().clone()
}

/// The process-wide gemm kernel family: the one `FASTNN_ISA` names, else
/// the best available. Decided once; a successful choice is logged to
/// stderr the first time it is asked for. A refusal (of any part of
/// `FASTNN_ISA`) is not logged: the caller reports the error.
pub fn try_selected() -> Result<Isa, IsaError> {
    static LOGGED: Once = Once::new();
    let choice = check_env().map(|(isa, _)| isa);
    if let Ok(isa) = &choice {
        if !QUIET.load(Ordering::Relaxed) {
            LOGGED.call_once(|| eprintln!("fastnn: gemm kernel {isa} (detected: {})", features()));
        }
    }
    choice
}

/// Set by [`quiet`].
static QUIET: AtomicBool = AtomicBool::new(false);

/// No log line of the kernel choice from this process (the ranks of a
/// distributed run but the first, which speaks for all).
pub fn quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Like [`try_selected`], but panics with the refusal message. For tests and
/// examples; code reachable from a command uses [`try_selected`].
pub fn selected() -> Isa {
    try_selected().unwrap_or_else(|e| panic!("{e}"))
}

/// The process-wide bf16 kernel: the one `FASTNN_ISA` names, else the best
/// available. Decided once, logged and refused as [`try_selected`] is.
pub fn try_selected_bf16() -> Result<Bf16Kernel, IsaError> {
    static LOGGED: Once = Once::new();
    let choice = choice().clone().map(|(_, kernel)| kernel);
    if let Ok(kernel) = &choice {
        LOGGED.call_once(|| {
            eprintln!(
                "fastnn: bf16 kernel {} (detected: {})",
                kernel.name(),
                features()
            )
        });
    }
    choice
}

/// Like [`try_selected_bf16`], but panics with the refusal message. For
/// tests and examples; code reachable from a command uses
/// [`try_selected_bf16`].
pub fn selected_bf16() -> Bf16Kernel {
    try_selected_bf16().unwrap_or_else(|e| panic!("{e}"))
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
    fn stores_are_prefetched_into_l1_from_zen_5_on() {
        let intel = vendor_words(b"GenuineIntel");
        // Signatures (leaf 1, EAX) of an EPYC 9004 (Zen 4, family 19h), the
        // EPYC of lscpu's family 26 model 2 (Zen 5, 1Ah) and a Xeon of
        // family 6 model 207.
        assert!(!zen5_or_later(AMD, 0x00A1_0F11));
        assert!(zen5_or_later(AMD, 0x00B0_0F21));
        assert!(!zen5_or_later(intel, 0x000C_06F2));
        // An Intel CPU with AMD's family field is still Intel's.
        assert!(!zen5_or_later(intel, 0x00B0_0F21));
    }

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

    fn named(gemm: Option<Isa>, bf16: Option<Bf16Kernel>) -> Result<IsaOverride, IsaError> {
        Ok(IsaOverride { gemm, bf16 })
    }

    #[test]
    fn override_names_each_kernel_alone() {
        for isa in Isa::ALL {
            assert_eq!(IsaOverride::parse(isa.name()), named(Some(isa), None));
        }
        for k in Bf16Kernel::ALL {
            assert_eq!(IsaOverride::parse(k.name()), named(None, Some(k)));
        }
    }

    #[test]
    fn override_names_both_in_either_order_any_case() {
        let both = named(Some(Isa::Avx2), Some(Bf16Kernel::Portable));
        for value in [
            "avx2,bf16-portable",
            "bf16-portable,avx2",
            "AVX2,BF16-Portable",
            " bf16-portable , Avx2 ",
        ] {
            assert_eq!(IsaOverride::parse(value), both, "{value:?}");
        }
        let both = named(Some(Isa::Scalar), Some(Bf16Kernel::Avx512Bf16));
        assert_eq!(IsaOverride::parse("avx512-bf16, scalar"), both);
    }

    #[test]
    fn override_empty_means_defaults() {
        for value in ["", "  "] {
            assert_eq!(IsaOverride::parse(value), named(None, None), "{value:?}");
        }
        let (isa, kernel) = IsaOverride::default().resolve().unwrap();
        assert_eq!(isa, Isa::best_available());
        assert_eq!(kernel, Bf16Kernel::detect());
    }

    #[test]
    fn override_refuses_two_of_a_kind() {
        let twice = |kind, first, second| {
            Err(IsaError::Twice {
                kind,
                first,
                second,
            })
        };
        assert_eq!(
            IsaOverride::parse("avx2,avx512"),
            twice("gemm", "avx2", "avx512")
        );
        assert_eq!(
            IsaOverride::parse("scalar,bf16-portable,SCALAR"),
            twice("gemm", "scalar", "scalar")
        );
        assert_eq!(
            IsaOverride::parse("bf16-portable,bf16-portable"),
            twice("bf16", "bf16-portable", "bf16-portable")
        );
        assert_eq!(
            IsaOverride::parse("avx512-bf16,avx2,bf16-portable"),
            twice("bf16", "avx512-bf16", "bf16-portable")
        );
    }

    #[test]
    fn override_refuses_unknown_names_listing_every_kernel() {
        for (value, item) in [
            ("bf16-nope", "bf16-nope"),
            ("avx2,sse", "sse"),
            ("avx2 scalar", "avx2 scalar"),
            ("bf16", "bf16"),
        ] {
            let err = IsaOverride::parse(value).unwrap_err();
            assert_eq!(err, IsaError::UnknownKernel(item.into()), "{value:?}");
            let msg = err.to_string();
            for name in Isa::ALL.map(Isa::name) {
                assert!(msg.contains(name), "{msg}");
            }
            for name in Bf16Kernel::ALL.map(Bf16Kernel::name) {
                assert!(msg.contains(name), "{msg}");
            }
        }
    }

    #[test]
    fn override_refuses_empty_items() {
        for value in ["avx2,,", "avx2,", ",avx2", "avx2, ,bf16-portable", ","] {
            assert_eq!(
                IsaOverride::parse(value),
                Err(IsaError::EmptyItem),
                "{value:?}"
            );
        }
    }

    #[test]
    fn missing_bf16_kernel_is_refused_not_downgraded() {
        assert_eq!(check_bf16(Bf16Kernel::Portable), Ok(Bf16Kernel::Portable));
        assert!(Bf16Kernel::detect().is_available());
        let mut refused = 0;
        for kernel in Bf16Kernel::ALL {
            let forced = IsaOverride {
                gemm: None,
                bf16: Some(kernel),
            };
            if kernel.is_available() {
                assert_eq!(forced.resolve().unwrap().1, kernel);
                continue;
            }
            let err = forced.resolve().unwrap_err();
            assert!(
                matches!(err, IsaError::Bf16Unsupported { kernel: k, .. } if k == kernel),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{} is not supported", kernel.name())),
                "{msg}"
            );
            assert!(msg.contains(&features().to_string()), "{msg}");
            refused += 1;
        }
        if refused == 0 {
            report_skipped(
                "refusal of a bf16 kernel this CPU lacks",
                "this CPU runs every bf16 kernel",
            );
        }
    }
}
