//! `fastnn train --distributed` under `mpirun` (built with the `mpi`
//! feature; `.ci/run` installs Open MPI and runs these). The same runs on
//! thread ranks (`tests/distributed.rs`) give the expected bits: MPI only
//! moves them.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ranks::{agreed_model, assert_follows, same_bits, train_ranks};
use common::{ok, report, s};
use fastnn::checkpoint::{self, load_model};
use fastnn::data::Dataset;
use fastnn::distributed::OneProcess;
use fastnn::train::{train_on, Silent};

/// `mpirun -np <ranks> fastnn train --distributed <args>`, one thread a
/// rank, as root if need be, more ranks than cores allowed.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args(["-np", &ranks.to_string()])
    .arg(env!("CARGO_BIN_EXE_fastnn"))
    .args(["train", "--distributed", "--quiet", "--threads", "1"])
    .args(args);
    cmd
}

/// `fastnn train` of [`RUN`] for 2 epochs in this process alone, one
/// thread, into `out`.
fn one_process(data: &Path, out: &Path) -> Command {
    let mut cmd = common::bin();
    cmd.args(["train", "--quiet", "--threads", "1", "--epochs", "2"])
        .args(["--data", s(data), "--out", s(out)])
        .args(RUN);
    cmd
}

/// True when `mpirun` runs here; otherwise the test reports itself skipped.
fn have_mpirun(what: &str) -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        report::ran(what);
    } else {
        report::skipped(what, "mpirun is not installed (Debian: openmpi-bin)");
    }
    found
}

fn dataset(dir: &Path) -> PathBuf {
    common::synthetic_with_shape(dir, 1050, 200, &[1, 8, 8], 5, 3)
}

/// The run's flags: a small network, dropout and flips, 2 epochs.
const RUN: &[&str] = &[
    "--hidden",
    "96,48",
    "--batch",
    "64",
    "--dropout",
    "0.1",
    "--flip",
    "--validation",
    "150",
    "--lr",
    "0.02",
    "--seed",
    "7",
];

fn params(dir: &Path) -> Vec<f32> {
    load_model(&dir.join(checkpoint::MODEL_FILE))
        .unwrap()
        .mlp
        .params
        .to_vec()
}

#[test]
fn ranks_under_mpirun_give_the_bits_of_as_many_thread_ranks_and_follow_one_process() {
    if !have_mpirun("2 and 4 MPI ranks against thread ranks and one process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    // 4 ranks on this 2-core machine: oversubscribed, for the code path.
    for ranks in [2, 4] {
        let out = dir.path().join(format!("mpi-{ranks}"));
        let run = mpirun(
            ranks,
            &["--data", s(&data), "--epochs", "2", "--out", s(&out)],
        )
        .args(RUN)
        .output()
        .unwrap();
        ok(&run);
        // The same configuration, from the run's own checkpoint, on threads.
        let cfg = checkpoint::load(&out).unwrap().config;
        let data = Dataset::open(&data).unwrap();
        let (mlp, _) = agreed_model(train_ranks(&data, &cfg, ranks, None, false));
        assert!(same_bits(&params(&out), &mlp.params), "{ranks} ranks");
    }
    // And one process, within the drift of a sum split over the ranks.
    let one = dir.path().join("one");
    ok(&one_process(&data, &one).output().unwrap());
    let one = load_model(&one.join(checkpoint::MODEL_FILE)).unwrap().mlp;
    for ranks in [2, 4] {
        let mpi = load_model(&dir.path().join(format!("mpi-{ranks}/model.safetensors"))).unwrap();
        assert_follows(&one, &mpi.mlp, &format!("{ranks} MPI ranks"));
    }
}

#[test]
fn distributed_without_mpirun_is_one_rank_and_one_process() {
    // MPI's singleton start: a run of one rank, with the bits of a plain run.
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let (single, plain) = (dir.path().join("single"), dir.path().join("plain"));
    let singleton = one_process(&data, &single)
        .arg("--distributed")
        .output()
        .unwrap();
    if !singleton.status.success() {
        // Some MPI builds cannot start without a launcher.
        let err = String::from_utf8_lossy(&singleton.stderr);
        report::skipped(
            "MPI singleton start",
            err.lines().next().unwrap_or("failed"),
        );
        return;
    }
    report::ran("MPI singleton start");
    ok(&one_process(&data, &plain).output().unwrap());
    assert!(same_bits(&params(&single), &params(&plain)));
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_one_and_back() {
    if !have_mpirun("resume across MPI rank counts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dataset(dir.path());
    let data = Dataset::open(&path).unwrap();
    let epochs = |n: &'static str| ["--data", s(&path), "--epochs", n].map(str::to_string);
    // 2 ranks, then 1 process, then 2 ranks again.
    let out = dir.path().join("run");
    ok(&mpirun(2, &["--out", s(&out)])
        .args(epochs("1"))
        .args(RUN)
        .output()
        .unwrap());
    let first = checkpoint::load(&out).unwrap();
    ok(&common::bin()
        .args(["train", "--quiet", "--resume", s(&out)])
        .args(epochs("2"))
        .output()
        .unwrap());
    let second = checkpoint::load(&out).unwrap();
    ok(&mpirun(2, &["--resume", s(&out)])
        .args(epochs("3"))
        .output()
        .unwrap());
    assert_eq!(checkpoint::load(&out).unwrap().epochs_done, 3);

    // The same hand-overs on thread ranks and one process.
    let ref_out = dir.path().join("reference");
    let cfg = |n| fastnn::train::TrainConfig {
        epochs: n,
        ..first.config.clone()
    };
    let (c1, c2, c3) = (cfg(1), cfg(2), cfg(3));
    agreed_model(train_ranks(&data, &c1, 2, Some(&ref_out), false));
    assert!(same_bits(
        &first.mlp.params,
        &checkpoint::load(&ref_out).unwrap().mlp.params
    ));
    let ck = checkpoint::load(&ref_out).unwrap();
    train_on(
        &data,
        &c2,
        Some(&ref_out),
        Some(ck),
        &mut Silent,
        Box::new(OneProcess),
    )
    .unwrap();
    assert!(same_bits(
        &second.mlp.params,
        &checkpoint::load(&ref_out).unwrap().mlp.params
    ));
    let (mlp, _) = agreed_model(train_ranks(&data, &c3, 2, Some(&ref_out), true));
    assert!(same_bits(&params(&out), &mlp.params));
}

/// The ranks `mpirun` started: its child processes running fastnn, by rank.
fn ranks_of(mpirun: &Child) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 4 of /proc/<pid>/stat (after the parenthesised name) is the parent.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent != Some(mpirun.id()) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .filter_map(|v| v.strip_prefix(b"OMPI_COMM_WORLD_RANK="))
            .find_map(|v| std::str::from_utf8(v).ok()?.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found.sort();
    found
}

#[test]
fn a_killed_rank_ends_the_run_and_the_checkpoint_resumes() {
    if !have_mpirun("SIGKILL of one MPI rank") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dataset(dir.path());
    let out = dir.path().join("run");
    let mut job = mpirun(
        2,
        &["--data", s(&path), "--epochs", "100000", "--out", s(&out)],
    )
    .args(["--hidden", "256,256", "--batch", "16"])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let started = Instant::now();
    let checkpoint_file = out.join("checkpoint.safetensors");
    while !checkpoint_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no checkpoint within 60 s"
        );
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ranks = ranks_of(&job);
    assert_eq!(
        ranks.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 1],
        "{ranks:?}"
    );
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &ranks[1].1.to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the job still runs 30 s after a rank died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !status.success(),
        "the job exited 0 after a rank was killed"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("signal 9"),
        "stderr does not name the killed rank: {stderr}"
    );

    // The last checkpoint is whole and resumes, on one process.
    let ck = checkpoint::load(&out).unwrap();
    let next = (ck.epochs_done + 1).to_string();
    ok(&common::bin()
        .args(["train", "--quiet", "--resume", s(&out), "--epochs", &next])
        .args(["--data", s(&path)])
        .output()
        .unwrap());
    assert_eq!(
        checkpoint::load(&out).unwrap().epochs_done,
        ck.epochs_done + 1
    );
}

#[test]
fn the_dry_run_of_ranks_says_how_each_batch_is_split_once() {
    if !have_mpirun("--dry-run under mpirun") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = ok(
        &mpirun(3, &["--data", s(&data), "--batch", "100", "--dry-run"])
            .output()
            .unwrap(),
    );
    let said = "distributed: 3 ranks, at most 34 samples of each batch of 100 per rank";
    assert_eq!(out.matches(said).count(), 1, "{out}");
    assert_eq!(out.matches("# resolved configuration").count(), 1, "{out}");
}

#[test]
fn a_configuration_every_rank_refuses_is_said_once_and_ends_the_job() {
    if !have_mpirun("a refused configuration under mpirun") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let run = mpirun(3, &["--data", s(&data), "--batch", "2"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let said = "fastnn: error: rank 0 of 3: invalid configuration: 3 ranks need a batch of at least 3 samples to share (--batch 2)";
    assert_eq!(stderr.matches(said).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("fastnn: error").count(), 1, "{stderr}");
}
