//! `--sandbox DIR`: a pipeline is trusted code (it names the files it reads and writes);
//! run with a sandbox, every file it names must lie under one folder.

use std::path::{Component, Path, PathBuf};

/// The folder a pipeline's files must lie under, as its real path (symbolic links
/// resolved), so a link inside it that points out of it does not count as inside.
#[derive(Clone, Debug)]
pub struct Sandbox(PathBuf);

/// A file a pipeline names that lies outside its sandbox.
#[derive(Clone, Debug, thiserror::Error)]
#[error("`{path}` is outside the sandbox {}", .sandbox.display())]
pub struct OutsideSandbox {
    pub path: String,
    pub sandbox: PathBuf,
}

impl Sandbox {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        Ok(Sandbox(dir.canonicalize()?))
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `path` (absolute) if it lies under the sandbox once `..` and symbolic links are
    /// resolved; `shown` is how the pipeline wrote it, for the error.
    pub fn admit(&self, path: &Path, shown: &str) -> Result<PathBuf, OutsideSandbox> {
        let real = real_path(path);
        if real.starts_with(&self.0) {
            Ok(path.to_path_buf())
        } else {
            Err(OutsideSandbox {
                path: shown.to_string(),
                sandbox: self.0.clone(),
            })
        }
    }
}

/// The real path of `path`: `.` and `..` resolved as written, then the longest part that
/// exists resolved through the file system (a file still to be written need not exist).
pub fn real_path(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_inside_only_once_dots_and_links_are_resolved() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("box");
        std::fs::create_dir_all(inside.join("data")).unwrap();
        std::fs::write(root.path().join("secret.csv"), "x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.csv"), inside.join("data/link.csv")).unwrap();
        let sandbox = Sandbox::new(&inside).unwrap();
        assert!(sandbox.admit(&inside.join("data/usage.csv"), "data/usage.csv").is_ok());
        assert!(sandbox.admit(&inside.join("new/later.csv"), "new/later.csv").is_ok());
        assert!(sandbox.admit(&inside.join("data/../../secret.csv"), "x").is_err());
        assert!(sandbox.admit(&inside.join("data/link.csv"), "data/link.csv").is_err());
        assert!(sandbox.admit(Path::new("/etc/passwd"), "/etc/passwd").is_err());
    }
}
