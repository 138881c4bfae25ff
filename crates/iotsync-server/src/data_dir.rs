//! The data dir holds every appSecret and deviceSecret (the registry) and messages that
//! carry device secrets (the backlog): the dir and every dir in it are 0700, every file
//! 0600 (issue 15). Files are created so where they are created (the registry, backlog
//! segments, the index spill file, the operator token, the TLS files, `LOCK`); at start
//! [`prepare`] also tightens whatever an older version left wider, and logs it once.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (0700) if missing, then tightens it and everything in it.
pub fn prepare(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let tightened = tighten(dir)?;
    if !tightened.is_empty() {
        let shown: Vec<String> = tightened
            .iter()
            .take(10)
            .map(|p| p.display().to_string())
            .collect();
        tracing::warn!(
            count = tightened.len(),
            paths = %shown.join(", "),
            "tightened permissions in the data dir (dirs 0700, files 0600) left wider by an older version"
        );
    }
    Ok(tightened)
}

/// Sets group/other-accessible dirs to 0700 and files to 0600 under `root` (itself
/// included); symlinks are neither followed nor changed. Returns what it changed.
pub fn tighten(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        let want = if ft.is_dir() {
            DIR_MODE
        } else if ft.is_file() {
            FILE_MODE
        } else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))?;
            changed.push(path.clone());
        }
        if ft.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tightens_wide_files_and_dirs_and_leaves_private_ones() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("data");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a"), b"x").unwrap();
        std::fs::write(root.join("sub/b"), b"x").unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(root.join("sub/b"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let mut changed = prepare(&root).unwrap();
        changed.sort();
        assert_eq!(
            changed,
            vec![root.clone(), root.join("a"), root.join("sub")]
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("a")), 0o600);
        assert_eq!(
            mode(Path::new("/etc/passwd")) & 0o044,
            0o044,
            "symlink target untouched"
        );
        assert!(
            prepare(&root).unwrap().is_empty(),
            "nothing left to tighten"
        );
    }
}
