//! `skiff step new NAME --lang rust|js|python`: a step project that builds with one command.
//!
//! The projects are files under `templates/`, embedded in the binary. Every project also gets
//! `wit/step.wit` as this binary was built with it, so a new project always matches the `skiff`
//! that made it. Each template is a working step: `describe` declares an input, an output, a
//! host (`${inputs.webhook}`) and a secret; `run` reads the input, logs, posts to the webhook
//! with the secret and sets the outputs. `host/tests/all/authoring.rs` builds all three with
//! their real toolchains and runs them in one pipeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

/// Arguments of `skiff step new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The step's name (and the project folder's): lowercase letters, digits and `-`,
    /// starting with a letter, like `hello` or `deploy-preview`.
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to create the project (default: `./NAME`). It must not exist, or be empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Rust only: depend on the SDK in this folder (the `step-sdk/` of a Skiff checkout)
    /// instead of `skiff-step-sdk = "0.1"` from crates.io.
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// The languages a step project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with `skiff-step-sdk`, built by cargo.
    Rust,
    /// JavaScript, built by componentize-js.
    #[value(alias = "javascript")]
    Js,
    /// Python, built by componentize-py.
    #[value(alias = "py")]
    Python,
}

/// One file of a project: its path in the project, its text, whether it is a script.
struct File {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> File {
    File { path, text, executable: false }
}

/// Skiff's step ABI as this binary defines it: the only definition, `wit/` at the repository root.
const STEP_WIT: &str = include_str!("../../../../wit/step.wit");

const RUST: &[File] = &[
    file("Cargo.toml", include_str!("templates/rust/Cargo.toml.tmpl")),
    file("src/lib.rs", include_str!("templates/rust/src/lib.rs")),
    file("README.md", include_str!("templates/rust/README.md")),
    file(".gitignore", include_str!("templates/rust/gitignore")),
];

const JS: &[File] = &[
    file("package.json", include_str!("templates/js/package.json")),
    file("build.mjs", include_str!("templates/js/build.mjs")),
    file("src/step.js", include_str!("templates/js/src/step.js")),
    file("README.md", include_str!("templates/js/README.md")),
    file(".gitignore", include_str!("templates/js/gitignore")),
];

const PYTHON: &[File] = &[
    file("app.py", include_str!("templates/python/app.py")),
    file("skiff_http.py", include_str!("templates/python/skiff_http.py")),
    File { path: "build.sh", text: include_str!("templates/python/build.sh"), executable: true },
    file("requirements.txt", include_str!("templates/python/requirements.txt")),
    file("wit/python.wit", include_str!("templates/python/wit/python.wit")),
    // WASI 0.2.12 as the `wasip2` crate 1.0.4 ships it: what componentize-py 0.25 links.
    file("wit/deps/cli.wit", include_str!("templates/python/wit/deps/cli.wit")),
    file("wit/deps/clocks.wit", include_str!("templates/python/wit/deps/clocks.wit")),
    file("wit/deps/filesystem.wit", include_str!("templates/python/wit/deps/filesystem.wit")),
    file("wit/deps/http.wit", include_str!("templates/python/wit/deps/http.wit")),
    file("wit/deps/io.wit", include_str!("templates/python/wit/deps/io.wit")),
    file("wit/deps/random.wit", include_str!("templates/python/wit/deps/random.wit")),
    file("wit/deps/sockets.wit", include_str!("templates/python/wit/deps/sockets.wit")),
    file("README.md", include_str!("templates/python/README.md")),
    file(".gitignore", include_str!("templates/python/gitignore")),
];

impl Lang {
    fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        }
    }

    fn files(self) -> &'static [File] {
        match self {
            Lang::Rust => RUST,
            Lang::Js => JS,
            Lang::Python => PYTHON,
        }
    }
}

/// Words a name cannot be: Rust keywords and the standard crates (the Rust project's library
/// is the name with `_` for `-`). One rule for every language keeps a step portable.
const RESERVED: &str = "abstract alloc as async await become box break const continue core crate do dyn else enum \
                        extern false final fn for gen if impl in let loop macro match mod move mut override priv \
                        proc-macro pub ref return self static std struct super test trait true try type typeof \
                        unsafe unsized use virtual where while yield";

const VALID_NAME: &str = "a step name is 1 to 64 lowercase letters, digits and single `-`, starting with a letter and \
                          not ending with `-`, like `hello` or `deploy-preview`";

/// Checks a step name; the error says what a valid one is.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !valid {
        bail!("`{name}` is not a valid step name: {VALID_NAME}");
    }
    if RESERVED.split_whitespace().any(|w| w == name) {
        bail!("`{name}` is a reserved word in Rust, which every step name must work in: pick another name");
    }
    Ok(())
}

/// The `skiff-step-sdk` dependency line of the Rust project's Cargo.toml.
fn sdk_dependency(sdk: Option<&Path>) -> anyhow::Result<String> {
    let Some(sdk) = sdk else { return Ok(r#"skiff-step-sdk = "0.1""#.into()) };
    let manifest = sdk.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!("--sdk {}: no Cargo.toml there; give the `step-sdk` folder of a Skiff checkout", sdk.display())
    })?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("reading {}", manifest.display()))?;
    let name = table.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str());
    if name != Some("skiff-step-sdk") {
        bail!(
            "--sdk {}: the package there is {}, not skiff-step-sdk; give the `step-sdk` folder of a Skiff checkout",
            sdk.display(),
            name.map_or("unnamed".into(), |n| format!("`{n}`"))
        );
    }
    // Absolute, so the project builds wherever it is moved on this machine.
    let abs = std::fs::canonicalize(sdk).with_context(|| format!("resolving {}", sdk.display()))?;
    let path = abs.to_str().with_context(|| format!("--sdk {}: the path is not UTF-8", abs.display()))?;
    Ok(format!("skiff-step-sdk = {{ path = {} }}", toml::Value::String(path.into())))
}

/// Refuses a folder that exists and holds anything.
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty: pick another name, give an empty or new folder with --dir, \
                     or remove it",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() => {
            bail!("{} already exists and is not a folder: pick another name or --dir", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// A path as a shell word.
fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./+:@".contains(c)) {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes the project for `args` and prints the commands to run next.
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    if args.sdk.is_some() && args.lang != Lang::Rust {
        bail!(
            "--sdk points Cargo at a local skiff-step-sdk, so it is for --lang rust only; drop it for --lang {}",
            args.lang.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
        );
    }
    let sdk = sdk_dependency(args.sdk.as_deref())?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(&args.name));
    check_dir(&dir)?;

    let crate_name = args.name.replace('-', "_");
    let render = |text: &str| {
        text.replace("{{name}}", &args.name).replace("{{crate}}", &crate_name).replace("{{sdk_dependency}}", &sdk)
    };
    let files = args.lang.files().iter().map(|f| (f.path, render(f.text), f.executable));
    for (path, text, executable) in files.chain([("wit/step.wit", STEP_WIT.to_string(), false)]) {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        if executable {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", target.display()))?;
        }
    }

    crate::outln!("Created the {} step `{}` in {}.", args.lang.title(), args.name, dir.display());
    crate::outln!();
    crate::outln!("Next:");
    crate::outln!("  cd {}", shell_word(&dir.display().to_string()));
    let wasm = match args.lang {
        Lang::Rust => {
            crate::outln!("  cargo build --target wasm32-wasip2 --release");
            format!("target/wasm32-wasip2/release/{crate_name}.wasm")
        }
        Lang::Js => {
            crate::outln!("  npm install            # once: componentize-js");
            crate::outln!("  npm run build");
            "step.wasm".into()
        }
        Lang::Python => {
            crate::outln!(
                "  python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt   # once"
            );
            crate::outln!("  ./build.sh");
            "step.wasm".into()
        }
    };
    crate::outln!("  skiff step run {wasm} --with who=Ada");
    crate::outln!();
    crate::outln!("README.md shows how to call a webhook with a secret, and how to `uses:` the step in a pipeline.");
    if args.lang == Lang::Rust && args.sdk.is_none() {
        crate::outln!(
            "Note: skiff-step-sdk is not on crates.io yet. Until it is, create the project with \
             --sdk PATH/TO/skiff/step-sdk, or point Cargo.toml's dependency at a checkout."
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_work_in_every_language() {
        for ok in ["hello", "deploy-preview", "s3-upload2", "a"] {
            check_name(ok).unwrap();
        }
        for bad in
            ["", "Hello", "9lives", "-x", "x-", "a--b", "under_score", "dot.name", "sp ace", "é", &"a".repeat(65)]
        {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("lowercase letters, digits and single `-`"), "{bad}: {e}");
        }
        assert!(check_name("fn").unwrap_err().to_string().contains("reserved word"));
    }

    #[test]
    fn every_project_has_a_readme_and_a_gitignore() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let paths: Vec<_> = lang.files().iter().map(|f| f.path).collect();
            assert!(paths.contains(&"README.md") && paths.contains(&".gitignore"), "{lang:?}: {paths:?}");
        }
    }
}
