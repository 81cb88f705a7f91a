//! The one error type of the data layer: a file and what is wrong with it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A problem with a data file, displayed as one line: `path: problem`.
#[derive(Debug)]
pub struct DataError {
    /// The file (or tarball member, written `archive.tar.gz!member`) at fault.
    pub path: PathBuf,
    /// What is wrong, in words a user can act on.
    pub problem: String,
}

impl DataError {
    /// A problem with `path`.
    pub fn new(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        DataError {
            path: path.as_ref().to_path_buf(),
            problem: problem.into(),
        }
    }

    /// An I/O failure on `path`, with what was being done.
    pub fn io(path: impl AsRef<Path>, doing: &str, err: std::io::Error) -> Self {
        DataError::new(path, format!("{doing}: {err}"))
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for DataError {}

/// Result alias of the data layer.
pub type Result<T> = std::result::Result<T, DataError>;
