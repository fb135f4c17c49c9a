//! Seeding a run's workspace from a folder on the host.

use std::path::Path;

/// Copies the tree under `src` into `dst`: folders, files, and symlinks as
/// links (never followed). Top-level folders named in `skip` are left out.
pub fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) -> std::io::Result<()> {
    let walker = walkdir::WalkDir::new(src)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_type().is_dir() && skip.iter().any(|n| e.file_name() == *n)));
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry.path().strip_prefix(src).map_err(std::io::Error::other)?;
        let to = dst.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
