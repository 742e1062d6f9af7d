//! Writing files so that a crash never leaves a half-written output behind: everything goes to a
//! temporary name in the same folder first and is renamed into place (rename is atomic on POSIX).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The temporary sibling of `path` that writers use before the final rename.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Write a file atomically through a caller-supplied writer; the file is fsynced before the rename.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.at(path)
}

/// Build a folder under a temporary name with `f`, then move it to `dir` (replacing an old one).
/// A crash inside `f` leaves `dir` untouched.
pub fn write_dir_atomic(dir: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_sibling(dir);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir_all(&tmp).at(&tmp)?;
    if let Err(e) = f(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = dir.with_file_name(format!(
            ".{}.old.{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::rename(dir, &old).at(dir)?;
        fs::rename(&tmp, dir).at(dir)?;
        fs::remove_dir_all(&old).at(&old)?;
    } else {
        fs::rename(&tmp, dir).at(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_dir_write_leaves_old_contents() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, |d| {
            fs::write(d.join("a"), b"1").at(d)?;
            Ok(())
        })
        .unwrap();
        let err = write_dir_atomic(&dir, |d| {
            fs::write(d.join("a"), b"2").at(d)?;
            Err(crate::Error::Invalid("boom".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"1");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
