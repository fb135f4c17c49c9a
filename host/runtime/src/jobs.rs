//! What a job keeps on this host between its steps, and what its processes start with: a
//! writable `$HOME` (host mode) or the image's writable upper layer (in a container), both gone
//! with the job, and the app's tool cache (`$SKIFF_TOOL_CACHE`), kept between the app's runs and
//! never shared with another app.
//!
//! Layout: `JOBS/<run>/<job>/home` and `JOBS/<run>/<job>/image-<digest>/{upper,work,root}`;
//! `TOOLS/<app>`.

use std::path::{Path, PathBuf};

use crate::image_store::PreparedImage;
use crate::sandbox::{Bind, ImageRoot};

/// Where `$HOME` is inside a host-mode sandbox (the job's own directory is bound there).
pub const HOME: &str = "/home/skiff";
/// Where the app's tool cache is inside every sandbox.
pub const TOOL_CACHE: &str = "/opt/skiff/tool-cache";
/// The `PATH` the sandbox gives when nothing else does (`skiff_pipeline::engine::DEFAULT_PATH`).
const DEFAULT_PATH: &str = crate::pipeline::engine::DEFAULT_PATH;

/// Per-job directories under one root, and per-app tool caches under another.
#[derive(Debug, Clone)]
pub struct JobSpaces {
    root: PathBuf,
    tool_caches: Option<PathBuf>,
}

/// What the processes of one step get from their job: an image root, bound directories, and
/// environment defaults (the step's own environment wins over them).
#[derive(Debug, Clone, Default)]
pub struct ProcessSetup {
    pub image: Option<ImageRoot>,
    pub binds: Vec<Bind>,
    pub env: Vec<(String, String)>,
}

/// A name as one path component, one to one: a name of letters, digits, `-`, `_` and `.` (not
/// starting with `.` or `%`) stays as it is; anything else becomes `%` and its sha256, so two
/// names never share a folder (an app `a/b` and an app `a_b` included).
fn component(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.starts_with(['.', '%'])
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        return s.to_string();
    }
    use sha2::Digest as _;
    format!("%{}", hex::encode(sha2::Sha256::digest(s.as_bytes())))
}

impl JobSpaces {
    /// Job directories under `root`; tool caches under `tool_caches` (none: no tool cache).
    pub fn new(root: PathBuf, tool_caches: Option<PathBuf>) -> Self {
        Self { root, tool_caches }
    }

    /// Job directories in the system's temporary folder, and tool caches in the cache directory:
    /// for one-shot runs (`skiff run`).
    pub fn local() -> Self {
        let root = std::env::temp_dir().join(format!("skiff-jobs-{}", std::process::id()));
        Self::new(root, Some(crate::cache::default_dir().join("tool-cache")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn job_dir(&self, run_id: &str, job_id: &str) -> PathBuf {
        self.root.join(component(run_id)).join(component(if job_id.is_empty() { "job" } else { job_id }))
    }

    /// What a step's processes get from their job: its `$HOME` (host mode) or its upper layer
    /// over `image`, and the tool cache of `app`, read-only for a run that may only read (a
    /// fork's pull request must not plant tools for the app's later runs). Creates the
    /// directories on first use.
    pub fn setup(
        &self,
        run_id: &str,
        job_id: &str,
        app: Option<&str>,
        image: Option<&PreparedImage>,
        read_only: bool,
    ) -> Result<ProcessSetup, String> {
        let job = self.job_dir(run_id, job_id);
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|e| format!("cannot create the job's directory {}: {e}", p.display()))
        };
        let mut setup = ProcessSetup::default();
        match image {
            Some(image) => {
                let user = image.user().map_err(|e| format!("image {}: {e}", image.reference))?;
                let hex = image.manifest.trim_start_matches("sha256:");
                let dir = job.join(format!("image-{}", &hex[..hex.len().min(16)]));
                mkdir(&dir)?;
                setup.image =
                    Some(ImageRoot { lower: image.rootfs.clone(), job_dir: dir, uid: user.uid, gid: user.gid });
                setup.env = image.env_pairs();
                // Steps start in the workspace, as GitHub's container jobs do (they run with
                // `--workdir` on the workspace); the image's own `WorkingDir` is there to use.
                let workdir = if image.working_dir.is_empty() { "/" } else { image.working_dir.as_str() };
                setup.env.push(("SKIFF_IMAGE_WORKDIR".into(), workdir.into()));
                if !setup.env.iter().any(|(k, _)| k == "HOME") {
                    setup.env.push(("HOME".into(), user.home));
                }
                if !setup.env.iter().any(|(k, _)| k == "PATH") {
                    setup.env.push(("PATH".into(), DEFAULT_PATH.into()));
                }
            }
            None => {
                let home = job.join("home");
                mkdir(&home)?;
                setup.binds.push(Bind { host: home, inside: HOME.into(), read_only: false });
                // Global installs (`npm i -g`, `pip install --user`) land in the job's home, and
                // what they install is on the PATH of the job's later steps.
                setup.env = vec![
                    ("HOME".into(), HOME.into()),
                    ("NPM_CONFIG_PREFIX".into(), format!("{HOME}/.npm-global")),
                    ("PATH".into(), format!("{HOME}/.npm-global/bin:{HOME}/.local/bin:{DEFAULT_PATH}")),
                ];
            }
        }
        if let Some(caches) = &self.tool_caches {
            let dir = caches.join(component(app.unwrap_or("_local")));
            mkdir(&dir)?;
            setup.binds.push(Bind { host: dir, inside: TOOL_CACHE.into(), read_only });
            setup.env.push(("SKIFF_TOOL_CACHE".into(), TOOL_CACHE.into()));
            setup.env.push(("RUNNER_TOOL_CACHE".into(), TOOL_CACHE.into()));
        }
        Ok(setup)
    }

    /// The job is over: its directories go (the run's too, once empty).
    pub fn finish(&self, run_id: &str, job_id: &str) {
        let job = self.job_dir(run_id, job_id);
        remove_tree(&job);
        if let Some(run) = job.parent() {
            let _ = std::fs::remove_dir(run);
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Removes a directory tree, making directories writable first where a process left them
/// read-only (overlayfs leaves its `work/work` at mode 000).
pub fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A process's environment: `defaults` (the job's), then the step's own on top. A `PATH` the
/// step has only because the engine put the sandbox's default at its end gets the job's `PATH`
/// there instead (the image's, or the host's with the job's install folders).
pub fn merge_env(defaults: &[(String, String)], own: Vec<(String, String)>) -> Vec<(String, String)> {
    let default_path = defaults.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    let mut out: Vec<(String, String)> = defaults.to_vec();
    for (k, v) in own {
        let v = match (&default_path, k.as_str()) {
            (Some(dp), "PATH") if v == DEFAULT_PATH => dp.clone(),
            (Some(dp), "PATH") => match v.strip_suffix(DEFAULT_PATH).filter(|front| front.ends_with(':')) {
                Some(front) => format!("{front}{dp}"),
                None => v,
            },
            _ => v,
        };
        out.retain(|(x, _)| *x != k);
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_steps_environment_wins_and_the_default_path_becomes_the_jobs() {
        let defaults = pairs(&[("HOME", "/root"), ("PATH", "/usr/local/node/bin:/usr/bin"), ("LANG", "C.UTF-8")]);
        let get = |env: &[(String, String)], k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        let env = merge_env(&defaults, pairs(&[("PATH", DEFAULT_PATH), ("LANG", "de_DE")]));
        assert_eq!(get(&env, "PATH").unwrap(), "/usr/local/node/bin:/usr/bin");
        assert_eq!(get(&env, "LANG").unwrap(), "de_DE");
        assert_eq!(get(&env, "HOME").unwrap(), "/root");
        let env = merge_env(&defaults, pairs(&[("PATH", &format!("/w/bin:{DEFAULT_PATH}"))]));
        assert_eq!(get(&env, "PATH").unwrap(), "/w/bin:/usr/local/node/bin:/usr/bin");
        let env = merge_env(&defaults, pairs(&[("PATH", "/mine")]));
        assert_eq!(get(&env, "PATH").unwrap(), "/mine");
        let env = merge_env(&defaults, pairs(&[("PATH", &format!("/x{DEFAULT_PATH}"))]));
        assert_eq!(get(&env, "PATH").unwrap(), format!("/x{DEFAULT_PATH}"), "only a whole entry is replaced");
    }

    #[test]
    fn jobs_get_their_own_home_and_apps_their_own_tool_cache() {
        let dir = tempfile::tempdir().unwrap();
        let spaces = JobSpaces::new(dir.path().join("jobs"), Some(dir.path().join("tools")));
        let a = spaces.setup("run-1", "build", Some("shop"), None, false).unwrap();
        let b = spaces.setup("run-1", "test", Some("../../etc"), None, false).unwrap();
        assert!(!a.binds[1].read_only);
        let fork = spaces.setup("run-2", "build", Some("shop"), None, true).unwrap();
        assert!(fork.binds[1].read_only, "a read-only run cannot write the tool cache");
        assert_eq!(fork.binds[1].host, a.binds[1].host);
        assert_ne!(a.binds[0].host, b.binds[0].host, "each job has its own home");
        assert_eq!(a.binds[0].inside, HOME);
        assert!(b.binds[1].host.starts_with(dir.path().join("tools")), "{:?}", b.binds[1]);
        assert_ne!(a.binds[1].host, b.binds[1].host, "each app has its own tool cache");
        std::fs::write(a.binds[0].host.join("f"), "x").unwrap();
        // Names that clean up alike still get folders of their own.
        let slash = spaces.setup("run-3", "j", Some("a/b"), None, false).unwrap();
        let under = spaces.setup("run-3", "j", Some("a_b"), None, false).unwrap();
        assert_ne!(slash.binds[1].host, under.binds[1].host);
        assert_eq!(component("."), component("."));
        assert!(component("..").starts_with('%') && component("").starts_with('%'));
        spaces.finish("run-1", "build");
        assert!(!a.binds[0].host.exists());
        assert!(a.binds[1].host.exists(), "the tool cache outlives the job");
    }
}
