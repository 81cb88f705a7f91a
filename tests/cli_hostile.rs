//! The hostile corpus (`tests/hostile/`, made by `make.py`, listed in its
//! README) end to end: the real binary on each malformed file must exit 1
//! with exactly one stderr line naming the file and the problem, and write
//! nothing (no output file or folder, no temporary file, an untouched run
//! folder on `--resume`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn hostile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// Every file of `dir`, recursively, with its contents.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

struct Case {
    file: String,
    command: String,
    fragment: String,
}

fn cases() -> Vec<Case> {
    let text = fs::read_to_string(hostile().join("cases.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "cases.tsv line {l:?}");
            Case {
                file: f[0].into(),
                command: f[1].into(),
                fragment: f[2].into(),
            }
        })
        .collect()
}

/// Runs one case in a fresh working folder and checks everything.
fn check(case: &Case) {
    let work = tempfile::tempdir().unwrap();
    let input = hostile().join(&case.file);
    let valid_data = hostile().join("valid/dataset.safetensors");
    let out = work.path().join("out");
    // The input as named on the command line, and as it must appear in the
    // message.
    let mut named = input.clone();
    let mut args: Vec<String> = Vec::new();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    match case.command.as_str() {
        "convert" => args.extend([
            "data".into(),
            "convert".into(),
            s(&input),
            "-o".into(),
            s(&out),
        ]),
        "info" => args.extend(["data".into(), "info".into(), s(&input)]),
        "eval" => args.extend([
            "eval".into(),
            "--model".into(),
            s(&input),
            "--data".into(),
            s(&valid_data),
        ]),
        "resume" => {
            // A copy, so that a write into the run folder would be seen.
            let run = work.path().join("run");
            fs::create_dir(&run).unwrap();
            for e in fs::read_dir(&input).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), run.join(e.file_name())).unwrap();
            }
            named = run.join("checkpoint.safetensors");
            args.extend([
                "train".into(),
                "--resume".into(),
                s(&run),
                "--data".into(),
                s(&valid_data),
                "--threads".into(),
                "1".into(),
            ]);
        }
        "config" => args.extend([
            "train".into(),
            "--config".into(),
            s(&input),
            "--data".into(),
            s(&valid_data),
            "--out".into(),
            s(&out),
        ]),
        other => panic!("unknown command {other} in cases.tsv"),
    }
    let before = snapshot(work.path());
    let inputs_before = snapshot(&hostile());
    let result = Command::new(env!("CARGO_BIN_EXE_fastnn"))
        .args(&args)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    let what = format!("{} ({}): stderr {stderr:?}", case.file, case.command);
    assert_eq!(result.status.code(), Some(1), "{what}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {what}");
    assert!(
        stderr.contains(named.to_str().unwrap()),
        "file not named: {what}"
    );
    assert!(
        stderr.contains(&case.fragment),
        "expected {:?}: {what}",
        case.fragment
    );
    assert!(!out.exists(), "output written: {what}");
    assert_eq!(
        snapshot(work.path()),
        before,
        "files written or changed: {what}"
    );
    assert_eq!(
        snapshot(&hostile()),
        inputs_before,
        "corpus changed: {what}"
    );
}

#[test]
fn every_hostile_file_fails_cleanly() {
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for case in &cases {
        check(case);
    }
}

#[test]
fn the_readme_lists_every_case() {
    let readme = fs::read_to_string(hostile().join("README.md")).unwrap();
    for case in cases() {
        assert!(
            readme.contains(&format!("`{}`", case.file)),
            "{} missing from README",
            case.file
        );
        assert!(
            readme.contains(&case.fragment.replace('|', "\\|")),
            "{} fragment missing",
            case.file
        );
    }
}
