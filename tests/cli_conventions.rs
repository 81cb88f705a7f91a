//! Command-line conventions: help with examples for every command,
//! NO_COLOR, a closed stdout exits quietly, exit codes 0 / 1 / 2, shell
//! completions, and the pictures of `plot` and `eval --plot`.

mod common;

use common::{bin, fastnn, ok as stdout_of, s};

use std::io::Read;

use std::process::Stdio;

const COMMANDS: &[&[&str]] = &[
    &[],
    &["data"],
    &["data", "convert"],
    &["data", "info"],
    &["data", "fetch"],
    &["train"],
    &["eval"],
    &["predict"],
    &["gradcheck"],
    &["bench"],
    &["bench", "gemm"],
    &["plot"],
    &["completions"],
];

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in COMMANDS {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = stdout_of(&fastnn(&args));
        assert!(
            help.contains("Usage:") && help.contains("\nExample") && help.contains("  fastnn "),
            "fastnn {}: {help}",
            cmd.join(" ")
        );
    }
}

#[test]
fn no_color_turns_off_escape_sequences() {
    // CLICOLOR_FORCE colours the output even into a pipe; NO_COLOR wins.
    let usage_error = ["train", "--epochs", "x"];
    let forced = bin()
        .args(usage_error)
        .env("CLICOLOR_FORCE", "1")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(
        forced.stderr.contains(&0x1b),
        "colour is forced without NO_COLOR"
    );
    for args in [&["--help"][..], &usage_error[..]] {
        let out = bin()
            .args(args)
            .env("NO_COLOR", "1")
            .env("CLICOLOR_FORCE", "1")
            .output()
            .unwrap();
        let all = [out.stdout, out.stderr].concat();
        assert!(
            !all.contains(&0x1b),
            "{args:?}: escape sequence with NO_COLOR"
        );
    }
}

#[test]
fn a_closed_stdout_exits_0_without_a_message() {
    // The read end is closed before fastnn writes: its first write fails
    // with EPIPE. The embedded Fashion-MNIST is the dataset (`data info`
    // with no file), and completions are a large output.
    for args in [&["data", "info"][..], &["completions", "bash"][..]] {
        let mut child = bin()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        let stderr: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("fastnn: converted the embedded"))
            .collect();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr:?}");
        assert!(stderr.is_empty(), "{args:?}: {stderr:?}");
    }
}

#[test]
fn exit_codes_are_0_1_and_2() {
    assert_eq!(fastnn(&["--version"]).status.code(), Some(0));
    // Usage errors (clap): unknown command, bad value, missing argument.
    for args in [
        &["frobnicate"][..],
        &["train", "--epochs", "x"][..],
        &["eval"][..],
        &["completions", "powershell"][..],
        &[][..],
    ] {
        let out = fastnn(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    // Runtime errors: one line naming the problem.
    let out = fastnn(&["data", "info", "/nonexistent/file.safetensors"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("fastnn: error: "), "{err}");
    let out = fastnn(&["plot", "/nonexistent/metrics.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    // A benchmark shape the training step never runs with the weights in
    // panels.
    let out = fastnn(&[
        "bench", "gemm", "--m", "4", "--k", "4", "--n", "4", "--trans", "TT", "--panels",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("fastnn: error: --panels") && last.contains("TT"),
        "{err}"
    );
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef fastnn"),
        ("fish", "complete -c fastnn"),
    ] {
        let script = stdout_of(&fastnn(&["completions", shell]));
        assert!(script.len() > 1000 && script.contains(marker), "{shell}");
        assert!(
            script.contains("train") && script.contains("plot"),
            "{shell}"
        );
    }
}

/// Width and height from a PNG's signature and IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn train_plot_and_eval_plot_write_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_dataset(dir.path(), 400, 100, 16, 3, 9);
    let run = dir.path().join("run");
    let metrics = dir.path().join("metrics.jsonl");
    stdout_of(&fastnn(&[
        "train",
        "--data",
        s(&data),
        "--hidden",
        "8",
        "--epochs",
        "3",
        "--threads",
        "1",
        "--validation",
        "50",
        "--quiet",
        "--out",
        s(&run),
        "--metrics",
        s(&metrics),
    ]));
    // Written at the end of training.
    let png = std::fs::read(run.join("curves.png")).unwrap();
    assert_eq!(png_size(&png), (1200, 500));

    let out = dir.path().join("c.png");
    let said = stdout_of(&fastnn(&["plot", s(&metrics), "-o", s(&out)]));
    assert!(said.contains("3 epochs"), "{said}");
    assert_eq!(png_size(&std::fs::read(&out).unwrap()), (1200, 500));

    let svg = dir.path().join("c.svg");
    stdout_of(&fastnn(&[
        "plot",
        s(&metrics),
        "-o",
        s(&svg),
        "--title",
        "my run",
    ]));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("my run") && text.contains("epoch"));

    let bad = fastnn(&["plot", s(&metrics), "-o", s(&dir.path().join("c.jpg"))]);
    assert_eq!(bad.status.code(), Some(1));

    let conf = dir.path().join("confusion.png");
    let model = run.join("model.safetensors");
    stdout_of(&fastnn(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--plot",
        s(&conf),
    ]));
    let (w, h) = png_size(&std::fs::read(&conf).unwrap());
    assert!(w >= 300 && h >= 300, "{w}x{h}");
    // Only the pictures: no temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// A gemm kernel this CPU cannot run, detected here with
/// `is_x86_feature_detected!` (independently of `fastnn::cpu`); `None` when
/// it runs every one.
fn a_kernel_this_cpu_lacks() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return Some("avx2");
        }
        if !is_x86_feature_detected!("avx512f") {
            return Some("avx512");
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    Some("avx512")
}

/// A bf16 kernel this CPU cannot run, detected here with
/// `is_x86_feature_detected!` (independently of `fastnn::cpu`); `None` when
/// it runs every one.
fn a_bf16_kernel_this_cpu_lacks() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
            return Some("avx512-bf16");
        }
        // std has no stable AMX names: the kernel's own list of flags.
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let listed = |f: &str| flags.split_whitespace().any(|w| w == f);
        let amx = listed("amx_tile") && listed("amx_bf16");
        if !flags.is_empty() && !amx {
            return Some("amx-bf16");
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    Some("avx512-bf16")
}

/// A bad `FASTNN_ISA` (an unknown name, two kernels of one kind, an empty
/// item, a gemm or bf16 kernel this CPU lacks) is refused by every command
/// the same way: exit 1, one stderr line `fastnn: error: FASTNN_ISA=<value>:
/// ...`, no panic, nothing on stdout, nothing written.
#[test]
fn a_bad_fastnn_isa_is_one_error_line_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = common::synthetic_dataset(d, 200, 50, 16, 3, 5);
    let run = d.join("run");
    let metrics = d.join("metrics.jsonl");
    let trained = bin()
        .env_remove("FASTNN_ISA")
        .args([
            "train",
            "--data",
            s(&data),
            "--hidden",
            "8",
            "--epochs",
            "1",
        ])
        .args(["--threads", "1", "--validation", "20", "--quiet"])
        .args(["--out", s(&run), "--metrics", s(&metrics)])
        .output()
        .unwrap();
    stdout_of(&trained);
    let model = run.join("model.safetensors");
    let (model, data, metrics) = (s(&model), s(&data), s(&metrics));
    let fixtures = common::fixtures();
    let mnist = fixtures.join("mnist-tiny");
    let written = d.join("written");
    let out = s(&written);
    let commands: &[&[&str]] = &[
        &["data", "info"],
        &["data", "info", data],
        &["data", "convert", s(&mnist), "-o", out],
        &[
            "data",
            "fetch",
            "mnist",
            "-o",
            out,
            "--url",
            "http://127.0.0.1:9/",
        ],
        &["train", "--data", data, "--epochs", "1", "--dry-run"],
        &[
            "train", "--data", data, "--hidden", "8", "--epochs", "1", "--out", out,
        ],
        &["eval", "--model", model, "--data", data],
        &[
            "predict",
            "--model",
            model,
            "--data",
            data,
            "--indices",
            "0,1",
        ],
        &["gradcheck", "--hidden", "4"],
        &[
            "bench",
            "gemm",
            "--m",
            "8",
            "--k",
            "8",
            "--n",
            "8",
            "--samples",
            "1",
        ],
        &["bench", "train", "--epochs", "2", "--threads", "1"],
        &["plot", metrics, "-o", out],
        &["completions", "bash"],
    ];
    let unsupported = "FASTNN_ISA naming a kernel this CPU lacks";
    let unsupported_bf16 = "FASTNN_ISA naming a bf16 kernel this CPU lacks";
    let mut values = vec![
        (
            "bogus",
            "unknown kernel \"bogus\": expected gemm kernels avx512,",
        ),
        ("bf16-nope", "unknown kernel \"bf16-nope\""),
        ("avx2,avx512", "two gemm kernels, avx2 and avx512"),
        (
            "bf16-portable,bf16-portable",
            "two bf16 kernels, bf16-portable and bf16-portable",
        ),
        ("avx2,,", "empty item"),
    ];
    match a_kernel_this_cpu_lacks() {
        Some(isa) => values.push((isa, "is not supported by this CPU")),
        None => common::report::skipped(unsupported, "this CPU runs every gemm kernel"),
    }
    match a_bf16_kernel_this_cpu_lacks() {
        Some(kernel) => values.push((kernel, "is not supported by this CPU")),
        None => common::report::skipped(unsupported_bf16, "this CPU runs every bf16 kernel"),
    }
    for &(value, problem) in &values {
        for args in commands {
            let got = bin().args(*args).env("FASTNN_ISA", value).output().unwrap();
            let stderr = String::from_utf8_lossy(&got.stderr);
            let what = format!("FASTNN_ISA={value} fastnn {}", args.join(" "));
            assert_eq!(got.status.code(), Some(1), "{what}: {stderr}");
            let lines: Vec<&str> = stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{what}: {stderr}");
            let prefix = format!("fastnn: error: FASTNN_ISA={value}: ");
            assert!(
                lines[0].starts_with(&prefix) && lines[0].contains(problem),
                "{what}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            assert!(got.stdout.is_empty(), "{what}: stdout {:?}", got.stdout);
            assert!(!written.exists(), "{what}: wrote {}", written.display());
        }
    }
    if a_kernel_this_cpu_lacks().is_some() {
        common::report::ran(unsupported);
    }
    if a_bf16_kernel_this_cpu_lacks().is_some() {
        common::report::ran(unsupported_bf16);
    }
}

/// A good `FASTNN_ISA` naming a bf16 kernel, alone or beside a gemm kernel,
/// in any order and case, or nothing at all, lets a command run: exit 0, no
/// error line. Only kernels every CPU runs are named.
#[test]
fn a_good_fastnn_isa_with_a_bf16_kernel_is_accepted() {
    for value in [
        "bf16-portable",
        "matrixmultiply,bf16-portable",
        "BF16-Portable, scalar",
        "matrixmultiply",
        "",
    ] {
        let got = bin()
            .args(["gradcheck", "--hidden", "4"])
            .env("FASTNN_ISA", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&got.stderr);
        let what = format!("FASTNN_ISA={value:?} fastnn gradcheck --hidden 4");
        assert_eq!(got.status.code(), Some(0), "{what}: {stderr}");
        assert!(!stderr.contains("error"), "{what}: {stderr}");
    }
}
