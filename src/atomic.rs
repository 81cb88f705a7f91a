//! Files written whole or not at all: the bytes go to a temporary file
//! beside the destination, which is renamed over it only once complete, so
//! an interrupted or failed write leaves the previous file (or nothing).

use std::path::Path;

/// A temporary file in the folder of `dest` (so the final rename stays on
/// one file system), readable by everyone like any file `cp` would write
/// (temporary files are private by default).
pub fn temp_beside(
    dest: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    builder.tempfile_in(dir)
}
