//! PyTorch round trip (tools/torch_roundtrip.py): a fastnn model file runs
//! in PyTorch with the same logits and accuracy, and a PyTorch state dict
//! saved with fastnn's metadata runs in `fastnn eval`. Skipped, loudly
//! (`SKIPPED: ...` on stdout), when torch and safetensors are not installed
//! for python3.

mod common;

use common::report;
use std::path::Path;
use std::process::Command;

const WHAT: &str = "PyTorch round trip";

fn torch_available() -> bool {
    Command::new("python3")
        .args(["-c", "import torch, safetensors, numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn fastnn_and_pytorch_models_give_the_same_logits_both_ways() {
    if !torch_available() {
        report::skipped(
            WHAT,
            "torch not installed: python3 -m pip install torch safetensors numpy",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_dataset(dir.path(), 600, 200, 24, 4, 11);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_fastnn");
    // Dropout and a normalisation shift the nn.Sequential indices (Linear,
    // Norm, act, Dropout, …); BatchNorm brings running statistics and drops
    // the Linear's bias. The script trains its PyTorch net (the other way)
    // with the same normalisation.
    for norm in ["none", "batch", "layer"] {
        let out = dir.path().join(format!("run-{norm}"));
        let train = Command::new(bin)
            .args(["train", "--data", &s(&data), "--hidden", "16,8"])
            .args(["--dropout", "0.1", "--norm", norm])
            .args(["--activation", "leaky_relu", "--epochs", "2"])
            .args(["--threads", "1", "--validation", "0", "--quiet"])
            .args(["--out", &s(&out)])
            .output()
            .unwrap();
        assert!(
            train.status.success(),
            "{}",
            String::from_utf8_lossy(&train.stderr)
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/torch_roundtrip.py");
        let run = Command::new("python3")
            .arg(script)
            .args(["--fastnn", bin, "--data", &s(&data), "--steps", "100"])
            .args(["--model", &s(&out.join("model.safetensors"))])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "norm {norm}: {stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        println!("norm {norm}: {report}");
        for way in ["fastnn_to_torch", "torch_to_fastnn"] {
            let r = &report[way];
            assert!(
                r["max_logit_diff"].as_f64().unwrap() <= 1e-4,
                "{norm} {way}: {r}"
            );
            assert_eq!(r["same_predictions"], 200, "{norm} {way}: {r}");
            assert_eq!(
                r["torch_accuracy"], r["fastnn_accuracy"],
                "{norm} {way}: {r}"
            );
        }
    }
    report::ran(WHAT);
}
