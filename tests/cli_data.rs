//! `fastnn data …` end to end: the real binary on fixtures in temporary
//! folders. Every failure must exit non-zero with one line naming the file
//! and the problem, and leave no output behind.

mod common;

use common::{fastnn, fixtures, s};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

/// Asserts a runtime failure: exit code 1 and one stderr line mentioning
/// `file` and `problem`.
fn assert_fails(out: &Output, file: &str, problem: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(stderr.contains(file), "{file:?} not named in: {stderr}");
    assert!(stderr.contains(problem), "{problem:?} not in: {stderr}");
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_fixture_archive_converts_and_shows_its_info() {
    let dir = tempfile::tempdir().unwrap();
    for (input, train, test) in [
        ("cifar-10-python.tar.gz", 1081, 20),
        ("cifar-10-binary.tar.gz", 1081, 20),
        ("cifar-100-python.tar.gz", 50, 20),
        ("cifar-100-binary.tar.gz", 50, 20),
    ] {
        let out = dir.path().join(format!("{input}.safetensors"));
        let res = fastnn(&["data", "convert", s(&fixtures().join(input)), "-o", s(&out)]);
        assert!(
            res.status.success(),
            "{input}: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let stdout = String::from_utf8_lossy(&res.stdout);
        assert!(
            stdout.contains(&format!("train {train}, test {test}")),
            "{stdout}"
        );
        let info = fastnn(&["data", "info", s(&out)]);
        assert!(info.status.success());
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(
            text.contains(&format!("split train: {train} samples")),
            "{text}"
        );
        assert!(text.contains("3×32×32 = 3072 u8 features"), "{text}");
        assert!(text.contains(input), "source named: {text}");
    }
    let info = fastnn(&[
        "data",
        "info",
        s(&dir.path().join("cifar-10-binary.tar.gz.safetensors")),
    ]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("classes:  10: airplane, automobile, bird"),
        "{text}"
    );
}

#[test]
fn an_existing_output_is_refused_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mnist.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let input = fixtures().join("mnist-tiny");
    let res = fastnn(&["data", "convert", s(&input), "-o", s(&out)]);
    assert_fails(
        &res,
        s(&out),
        "already exists (use --force to overwrite it)",
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let res = fastnn(&["data", "convert", s(&input), "-o", s(&out), "--force"]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_ne!(std::fs::read(&out).unwrap(), b"precious");
}

#[test]
fn bad_inputs_fail_cleanly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A tarball cut in the middle.
    let tarball = std::fs::read(fixtures().join("cifar-10-binary.tar.gz")).unwrap();
    std::fs::write(d.join("cut.tar.gz"), &tarball[..tarball.len() / 2]).unwrap();
    // An IDX folder whose image file has a wrong magic number.
    std::fs::create_dir(d.join("badmagic")).unwrap();
    std::fs::write(
        d.join("badmagic/train-images-idx3-ubyte"),
        [0u8, 1, 8, 3, 0, 0, 0, 0],
    )
    .unwrap();
    std::fs::write(
        d.join("badmagic/train-labels-idx1-ubyte"),
        [0u8, 0, 8, 1, 0, 0, 0, 0],
    )
    .unwrap();
    // A CSV table with a non-numeric cell.
    std::fs::write(d.join("bad.csv"), "label,a,b\n1,2,3\n2,x,4\n").unwrap();
    // Something that is no dataset at all.
    std::fs::write(d.join("notes.txt"), "hello").unwrap();
    let before = listing(d);

    let out = d.join("out.safetensors");
    let cases: [(&str, &str, &str); 4] = [
        ("cut.tar.gz", "cut.tar.gz", "truncated"),
        (
            "badmagic",
            "train-images-idx3-ubyte",
            "bad magic 00 01 08 03",
        ),
        (
            "bad.csv",
            "bad.csv",
            "line 3, column 2 (a): \"x\" is not a number",
        ),
        ("notes.txt", "notes.txt", "cannot tell the format"),
    ];
    for (input, file, problem) in cases {
        let res = fastnn(&["data", "convert", s(&d.join(input)), "-o", s(&out)]);
        assert_fails(&res, file, problem);
        assert_eq!(
            listing(d),
            before,
            "{input}: no output, no temporary file left"
        );
    }
}

#[test]
fn a_damaged_dataset_file_is_named_with_its_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.safetensors");
    let res = fastnn(&[
        "data",
        "convert",
        s(&fixtures().join("cifar-100-binary.tar.gz")),
        "-o",
        s(&out),
    ]);
    assert!(res.status.success());
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&out, &bytes[..bytes.len() - 10]).unwrap();
    assert_fails(&fastnn(&["data", "info", s(&out)]), s(&out), "truncated");
    let mut flipped = bytes;
    let i = flipped.len() / 2;
    flipped[i] ^= 1;
    std::fs::write(&out, &flipped).unwrap();
    assert_fails(&fastnn(&["data", "info", s(&out)]), s(&out), "corrupted");
}

#[test]
fn usage_errors_exit_with_2() {
    let res = fastnn(&["data", "convert", "x", "-o", "y", "--format", "parquet"]);
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("unknown format \"parquet\""));
    assert_eq!(fastnn(&["data", "frobnicate"]).status.code(), Some(2));
}

/// Serves `body` for `path` (404 otherwise) on 127.0.0.1 to `requests`
/// connections, then stops. Returns the server's base URL.
fn serve(path: &'static str, body: Vec<u8>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let found = line.split(' ').nth(1) == Some(path);
            let head = if found {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(head.as_bytes());
            if found {
                let _ = stream.write_all(&body);
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn fetch_downloads_verifies_and_converts_from_a_local_server() {
    let fixture = std::fs::read(fixtures().join("cifar-10-binary.tar.gz")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    let md5 = manifest["archives"]["cifar-10-binary.tar.gz"]["md5"]
        .as_str()
        .unwrap()
        .to_string();
    let base = serve("/c10.tar.gz", fixture, 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c10.safetensors");
    let url = format!("{base}/c10.tar.gz");

    // The published checksum belongs to the real archive: the fixture fails it.
    let res = fastnn(&["data", "fetch", "cifar10", "-o", s(&out), "--url", &url]);
    assert_fails(&res, &url, "checksum mismatch");
    assert!(
        listing(dir.path()).is_empty(),
        "nothing left behind: {:?}",
        listing(dir.path())
    );

    // A mirror's own checksum is accepted.
    let res = fastnn(&[
        "data",
        "fetch",
        "cifar10",
        "-o",
        s(&out),
        "--url",
        &url,
        "--md5",
        &md5,
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(listing(dir.path()), vec!["c10.safetensors".to_string()]);
    let info = fastnn(&["data", "info", s(&out)]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("split train: 1081 samples"));

    // A missing file is a download error, not a crash.
    let missing = format!("{base}/nothing.tar.gz");
    let res = fastnn(&[
        "data",
        "fetch",
        "cifar10",
        "-o",
        s(&dir.path().join("x.safetensors")),
        "--url",
        &missing,
    ]);
    assert_fails(&res, &missing, "download failed");
}

#[test]
fn fetch_without_network_says_how_to_get_the_files() {
    // A port nobody listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz");
    let dir = tempfile::tempdir().unwrap();
    let res = fastnn(&[
        "data",
        "fetch",
        "cifar10",
        "-o",
        s(&dir.path().join("c.safetensors")),
        "--url",
        &url,
    ]);
    assert_fails(&res, &url, "fastnn data convert");
    assert!(String::from_utf8_lossy(&res.stderr).contains("md5 c32a1d4ab5d03f1284b67883e8d87530"));
    assert!(listing(dir.path()).is_empty());
}
