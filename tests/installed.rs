//! The `fastnn` binary away from its source tree, as `cargo install` leaves
//! it: copied into an empty folder and run from another, it opens the
//! default dataset from the copy embedded in itself and caches the converted
//! file in the user's cache folder, writing nowhere else.

mod common;

use common::{ok, s};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::RwLock;

use fastnn::data::convert::{convert, ConvertOptions};
use fastnn::data::idx::FASHION_CLASSES;
use tempfile::TempDir;

/// A copy of the binary in a folder of its own, an empty working folder and
/// an empty home folder.
struct Installed {
    bin_dir: TempDir,
    cwd: TempDir,
    home: TempDir,
}

/// Copies of the binary are written under the write lock and run under the
/// read lock. A child forked by one test while another test's copy is still
/// open for writing inherits that descriptor until it execs, and the copy
/// then fails to run with "Text file busy" (ETXTBSY).
static EXEC: RwLock<()> = RwLock::new(());

impl Installed {
    fn new() -> Self {
        let bin_dir = tempfile::tempdir().unwrap();
        let copying = EXEC.write().unwrap_or_else(|e| e.into_inner());
        std::fs::copy(env!("CARGO_BIN_EXE_fastnn"), bin_dir.path().join("fastnn")).unwrap();
        drop(copying);
        Installed {
            bin_dir,
            cwd: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs the copy in the working folder, with `HOME` the home folder,
    /// no cache variable but those of `env`, and `home` replaced by
    /// `HOME=""` when `env` says so.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let _running = EXEC.read().unwrap_or_else(|e| e.into_inner());
        Command::new(self.bin_dir.path().join("fastnn"))
            .args(args)
            .current_dir(self.cwd.path())
            .env_remove("FASTNN_CACHE")
            .env_remove("XDG_CACHE_HOME")
            .env("HOME", self.home.path())
            .envs(env.iter().copied())
            .output()
            .expect("run the copied fastnn")
    }

    /// Asserts that nothing was written beside the binary or in the working
    /// folder.
    fn assert_untouched(&self) {
        assert_eq!(tree(self.bin_dir.path()), ["fastnn"]);
        assert!(
            tree(self.cwd.path()).is_empty(),
            "{:?}",
            tree(self.cwd.path())
        );
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// What converting the source tree's `data/fashion-mnist` gives.
fn converted_from_the_folder(dir: &Path) -> PathBuf {
    let path = dir.join("expected.safetensors");
    let opts = ConvertOptions {
        classes: Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()),
        ..ConvertOptions::default()
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist");
    convert(&source, &path, &opts).unwrap();
    path
}

/// Runs `data info` on the default dataset and checks it was converted
/// into `cache` (when `converts`) and is read from there.
fn info_from(installed: &Installed, env: &[(&str, &str)], cache: &Path, converts: bool) {
    let out = installed.run(&["data", "info"], env);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with(&format!("file:     {} (", cache.display())),
        "{stdout}"
    );
    assert!(stdout.contains("split train: 60000 samples"), "{stdout}");
    assert!(stdout.contains("split test: 10000 samples"), "{stdout}");
    assert_eq!(
        stderr.contains("converted the embedded Fashion-MNIST into"),
        converts,
        "{stderr}"
    );
    assert!(cache.is_file(), "{} missing", cache.display());
}

#[test]
fn the_default_dataset_is_cached_under_home() {
    let installed = Installed::new();
    let home = installed.home.path();
    let cache = home.join(".cache/fastnn/fashion-mnist.safetensors");
    info_from(&installed, &[], &cache, true);
    // Training finds it there too, without converting again.
    let out = installed.run(&["train", "--dry-run"], &[]);
    let stdout = ok(&out);
    assert!(
        stdout.contains(&format!("dataset {}", cache.display())),
        "{stdout}"
    );
    assert!(stdout.contains("784"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    installed.assert_untouched();
    assert_eq!(tree(home), [".cache/fastnn/fashion-mnist.safetensors"]);
    // The embedded copy converts to the very file the source folder gives.
    let expected = converted_from_the_folder(installed.cwd.path());
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        std::fs::read(expected).unwrap()
    );
}

#[test]
fn fastnn_cache_comes_first_and_a_damaged_cache_is_converted_again() {
    let installed = Installed::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = elsewhere.path().join("made/on demand");
    let xdg = elsewhere.path().join("xdg");
    let env = [("FASTNN_CACHE", s(&dir)), ("XDG_CACHE_HOME", s(&xdg))];
    let cache = dir.join("fashion-mnist.safetensors");
    info_from(&installed, &env, &cache, true);
    info_from(&installed, &env, &cache, false);
    // A truncated cache no longer validates: it is converted again.
    let len = std::fs::metadata(&cache).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&cache)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    info_from(&installed, &env, &cache, true);
    assert_eq!(std::fs::metadata(&cache).unwrap().len(), len);
    installed.assert_untouched();
    assert!(tree(installed.home.path()).is_empty());
    assert!(!xdg.exists());
    assert_eq!(tree(&dir), ["fashion-mnist.safetensors"]);
}

#[test]
fn xdg_cache_home_comes_before_home_when_absolute() {
    let installed = Installed::new();
    let xdg = tempfile::tempdir().unwrap();
    let cache = xdg.path().join("fastnn/fashion-mnist.safetensors");
    info_from(
        &installed,
        &[("XDG_CACHE_HOME", s(xdg.path()))],
        &cache,
        true,
    );
    installed.assert_untouched();
    assert!(tree(installed.home.path()).is_empty());
    assert_eq!(tree(xdg.path()), ["fastnn/fashion-mnist.safetensors"]);

    // A relative XDG_CACHE_HOME is ignored (as the XDG specification says).
    let cache = installed
        .home
        .path()
        .join(".cache/fastnn/fashion-mnist.safetensors");
    info_from(&installed, &[("XDG_CACHE_HOME", "relative")], &cache, true);
    installed.assert_untouched();
}

#[test]
fn without_a_cache_folder_the_error_says_what_to_set() {
    let installed = Installed::new();
    for args in [&["data", "info"][..], &["train", "--dry-run"][..]] {
        let out = installed.run(args, &[("HOME", "")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("fashion-mnist.safetensors: no cache folder")
                && stderr.contains("set FASTNN_CACHE to a folder"),
            "{stderr}"
        );
    }
    installed.assert_untouched();
    assert!(tree(installed.home.path()).is_empty());
}
