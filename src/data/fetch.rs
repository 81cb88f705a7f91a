//! Downloading the official dataset archives, with their published checksums.
//!
//! A download goes to a temporary folder beside the output, is checked
//! against the published md5 while it streams, and only then converted; a
//! failed or interrupted fetch leaves nothing behind.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use super::error::{DataError, Result};

/// One file of a remote dataset and its published md5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: &'static str,
    pub md5: &'static str,
}

/// A dataset that `fastnn data fetch` knows how to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// The name used on the command line.
    pub name: &'static str,
    /// The folder the files are downloaded from (ends with `/`).
    pub base_url: &'static str,
    /// The files to download: one archive, or the four IDX files.
    pub files: &'static [RemoteFile],
}

/// The datasets `fetch` knows. Checksums: the CIFAR page and torchvision for
/// CIFAR and MNIST, the Fashion-MNIST README for Fashion-MNIST.
pub const REMOTES: [Remote; 4] = [
    Remote {
        name: "cifar10",
        base_url: "https://www.cs.toronto.edu/~kriz/",
        files: &[RemoteFile {
            name: "cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
        }],
    },
    Remote {
        name: "cifar100",
        base_url: "https://www.cs.toronto.edu/~kriz/",
        files: &[RemoteFile {
            name: "cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
        }],
    },
    Remote {
        name: "mnist",
        base_url: "https://ossci-datasets.s3.amazonaws.com/mnist/",
        files: &[
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                md5: "d53e105ee54ea40749a09fcbcd1e9432",
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                md5: "9fb629c4189551a2d022fa330f9573f3",
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                md5: "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ],
    },
    Remote {
        name: "fashion-mnist",
        base_url: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files: &[
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                md5: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                md5: "25c81989df183df01b3e8a0aad5dffbe",
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                md5: "bef4ecab320f06d8554ea6380940ec79",
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                md5: "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ],
    },
];

/// The remote dataset called `name`.
pub fn remote(name: &str) -> Option<&'static Remote> {
    REMOTES.iter().find(|r| r.name == name)
}

/// md5 of a file, as lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, "cannot open", e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DataError::io(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// md5 of bytes in memory, as lowercase hex.
pub fn md5_bytes(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Progress of a download: `(bytes so far, total bytes if announced)`.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// Downloads `url` into `dest`, checking the md5 of the bytes received
/// against `expected_md5`. On any failure `dest` is removed.
pub fn download(url: &str, dest: &Path, expected_md5: &str, progress: Progress<'_>) -> Result<()> {
    let result = download_inner(url, dest, expected_md5, progress);
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn download_inner(
    url: &str,
    dest: &Path,
    expected_md5: &str,
    progress: Progress<'_>,
) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .build()
        .into();
    let offline = |e: &dyn std::fmt::Display| {
        DataError::new(
            url,
            format!(
                "download failed: {e}. Without network access, download {url} elsewhere (md5 {expected_md5}), \
                 copy it here and run `fastnn data convert <file or folder> -o <dataset.safetensors>`"
            ),
        )
    };
    let mut response = agent.get(url).call().map_err(|e| offline(&e))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut reader = response.body_mut().as_reader();
    let file = File::create(dest).map_err(|e| DataError::io(dest, "cannot create", e))?;
    let mut out = BufWriter::new(file);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| offline(&e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| DataError::io(dest, "cannot write", e))?;
        received += n as u64;
        progress(received, total);
    }
    out.flush()
        .map_err(|e| DataError::io(dest, "cannot write", e))?;
    if let Some(total) = total.filter(|&t| t != received) {
        return Err(DataError::new(
            url,
            format!("truncated download: {received} of {total} bytes"),
        ));
    }
    let actual = hex(&hasher.finalize());
    if actual != expected_md5.to_ascii_lowercase() {
        return Err(DataError::new(
            url,
            format!("checksum mismatch: md5 {actual}, expected {expected_md5} (a corrupt download or a different file)"),
        ));
    }
    Ok(())
}

/// Downloads every file of `remote` into `dir`, from `base_url` (the
/// remote's own unless overridden), returning the folder or single archive
/// to convert. `md5_override` replaces the published checksum of a
/// single-archive dataset (for a mirror serving another file).
pub fn fetch_files(
    remote: &Remote,
    base_url: Option<&str>,
    md5_override: Option<&str>,
    dir: &Path,
    progress: &mut dyn FnMut(&str, u64, Option<u64>),
) -> Result<PathBuf> {
    let single = remote.files.len() == 1;
    for file in remote.files {
        let url = match base_url {
            // A full URL for a single archive; a folder URL for IDX files.
            Some(u) if single => u.to_string(),
            Some(u) => format!("{}/{}", u.trim_end_matches('/'), file.name),
            None => format!("{}{}", remote.base_url, file.name),
        };
        let md5 = if single {
            md5_override.unwrap_or(file.md5)
        } else {
            file.md5
        };
        let dest = dir.join(file.name);
        download(&url, &dest, md5, &mut |done, total| {
            progress(file.name, done, total)
        })?;
    }
    Ok(if single {
        dir.join(remote.files[0].name)
    } else {
        dir.to_path_buf()
    })
}
