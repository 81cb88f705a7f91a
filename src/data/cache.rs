//! The user's cache folder, where converted and generated dataset files are
//! kept between runs (never the source tree, which an installed binary may
//! not have).
//!
//! The folder is `$FASTNN_CACHE` when set, else `$XDG_CACHE_HOME/fastnn`
//! when that is an absolute path, else `$HOME/.cache/fastnn`. It is created
//! on first use.

use std::ffi::OsString;
use std::path::PathBuf;

use super::error::{DataError, Result};

/// The variable naming the cache folder outright.
pub const CACHE_ENV: &str = "FASTNN_CACHE";

/// The path of the cached file `name`, its folder created.
pub fn file(name: &str) -> Result<PathBuf> {
    let dir = dir_from(|var| std::env::var_os(var)).ok_or_else(|| {
        DataError::new(
            name,
            format!(
                "no cache folder to keep it in: set {CACHE_ENV} to a folder \
                 (HOME and XDG_CACHE_HOME are unset or not absolute paths)"
            ),
        )
    })?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| DataError::io(&dir, "cannot create the cache folder", e))?;
    Ok(dir.join(name))
}

/// The cache folder given the environment `var`, or `None` when it names
/// none. Empty variables count as unset.
pub fn dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(CACHE_ENV) {
        return Some(dir);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("fastnn"));
    }
    var("HOME")
        .filter(|p| p.is_absolute())
        .map(|home| home.join(".cache/fastnn"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(vars: &[(&str, &str)]) -> Option<PathBuf> {
        dir_from(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn fastnn_cache_then_xdg_then_home() {
        let all = [
            ("FASTNN_CACHE", "/c/fastnn-here"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(dir(&all), Some(PathBuf::from("/c/fastnn-here")));
        assert_eq!(dir(&all[1..]), Some(PathBuf::from("/x/fastnn")));
        assert_eq!(dir(&all[2..]), Some(PathBuf::from("/h/.cache/fastnn")));
        assert_eq!(dir(&[]), None);
    }

    #[test]
    fn empty_and_relative_values_are_skipped() {
        assert_eq!(
            dir(&[
                ("FASTNN_CACHE", ""),
                ("XDG_CACHE_HOME", "rel"),
                ("HOME", "/h")
            ]),
            Some(PathBuf::from("/h/.cache/fastnn"))
        );
        assert_eq!(dir(&[("XDG_CACHE_HOME", ""), ("HOME", "")]), None);
        assert_eq!(dir(&[("HOME", "relative/home")]), None);
        // FASTNN_CACHE is taken as given, relative or not.
        assert_eq!(
            dir(&[("FASTNN_CACHE", "here")]),
            Some(PathBuf::from("here"))
        );
    }
}
