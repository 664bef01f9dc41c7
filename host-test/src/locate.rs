//! Where the CLI finds the filter .wasm: `--filter`, then `$ROLLOUT_FILTER`, then
//! `rollout_filter.wasm` next to the executable (an installed `rollout` and the filter it was
//! shipped with), then the build tree the binary was compiled in. A path given explicitly
//! that does not exist is an error rather than a reason to look further, so a typo never
//! tests another build than the one meant.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The environment variable that names the filter .wasm.
pub(crate) const ENV_VAR: &str = "ROLLOUT_FILTER";

/// The file name looked for next to the executable.
pub(crate) const FILE_NAME: &str = "rollout_filter.wasm";

/// The filter .wasm found, and where it came from in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The file.
    pub(crate) path: PathBuf,
    /// Which place it came from (`--filter`, `$ROLLOUT_FILTER`, ...).
    pub(crate) how: &'static str,
}

/// What the lookup may consult; each is `None` when it does not apply (no flag, variable
/// unset, executable's folder unknown).
pub(crate) struct Places<'a> {
    /// `--filter`.
    pub(crate) flag: Option<&'a Path>,
    /// `$ROLLOUT_FILTER`.
    pub(crate) env: Option<&'a Path>,
    /// The folder of the running executable.
    pub(crate) exe_dir: Option<&'a Path>,
    /// The filter's path in the build tree compiled into the binary.
    pub(crate) build_tree: &'a Path,
}

/// The places of this process: the flag, `$ROLLOUT_FILTER`, the executable's folder and the
/// build tree compiled into the binary.
pub(crate) fn find(flag: Option<&Path>) -> Result<Found> {
    let env = std::env::var_os(ENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let build_tree = host_test::testing::workspace_root().join(host_test::testing::FILTER_WASM);
    find_in(&Places {
        flag,
        env: env.as_deref(),
        exe_dir: exe_dir.as_deref(),
        build_tree: &build_tree,
    })
}

/// The lookup itself, on given places (tested without touching the process's own).
pub(crate) fn find_in(places: &Places<'_>) -> Result<Found> {
    // A path the user named is that filter or an error, never a fall-back to another one.
    let named = [
        (places.flag, "--filter", "--filter "),
        (places.env, "$ROLLOUT_FILTER", "$ROLLOUT_FILTER="),
    ];
    for (given, how, spelled) in named {
        if let Some(path) = given {
            if !path.is_file() {
                bail!("{spelled}{}: no such file", path.display());
            }
            return Ok(Found {
                path: path.to_path_buf(),
                how,
            });
        }
    }
    let beside = places.exe_dir.map(|dir| dir.join(FILE_NAME));
    if let Some(path) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(Found {
            path: path.clone(),
            how: "next to the rollout executable",
        });
    }
    if places.build_tree.is_file() {
        return Ok(Found {
            path: places.build_tree.to_path_buf(),
            how: "the build tree rollout was built in",
        });
    }
    let beside = beside.map_or_else(
        || "(the executable's folder is unknown)".to_owned(),
        |p| p.display().to_string(),
    );
    bail!(
        "no filter .wasm found. Looked for, in order: --filter FILE (not given); ${ENV_VAR} \
         (not set); {beside} (next to the rollout executable: missing); {} (the build tree \
         rollout was built in: missing). Build the filter with `cargo build --profile wasm -p \
         rollout-filter --target wasm32-wasip1` and pass --filter FILE, set {ENV_VAR}=FILE, or \
         put {FILE_NAME} next to the rollout executable",
        places.build_tree.display()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failing check in a test should panic")]

    use super::{Places, find_in};
    use std::path::{Path, PathBuf};

    /// A folder with a `rollout_filter.wasm` in it, and one without.
    fn folders(test: &str) -> (PathBuf, PathBuf) {
        let base =
            std::env::temp_dir().join(format!("rollout-locate-{test}-{}", std::process::id()));
        let (with, without) = (base.join("with"), base.join("without"));
        std::fs::create_dir_all(&with).unwrap();
        std::fs::create_dir_all(&without).unwrap();
        std::fs::write(with.join("rollout_filter.wasm"), b"\0asm").unwrap();
        (with, without)
    }

    #[test]
    fn the_first_place_that_applies_wins_in_order() {
        let (with, without) = folders("order");
        let file = with.join("rollout_filter.wasm");
        let missing = without.join("rollout_filter.wasm");
        let mut places = Places {
            flag: Some(&file),
            env: Some(Path::new("/nonexistent/env.wasm")),
            exe_dir: Some(&without),
            build_tree: &missing,
        };
        assert_eq!(find_in(&places).unwrap().how, "--filter");
        places.flag = None;
        places.env = Some(&file);
        assert_eq!(find_in(&places).unwrap().how, "$ROLLOUT_FILTER");
        places.env = None;
        places.exe_dir = Some(&with);
        let found = find_in(&places).unwrap();
        assert_eq!(
            (found.path, found.how),
            (file.clone(), "next to the rollout executable")
        );
        places.exe_dir = Some(&without);
        places.build_tree = &file;
        assert_eq!(
            find_in(&places).unwrap().how,
            "the build tree rollout was built in"
        );
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error_not_a_reason_to_look_further() {
        let (with, _) = folders("named");
        let file = with.join("rollout_filter.wasm");
        let typo = with.join("rollout_filtr.wasm");
        let places = Places {
            flag: Some(&typo),
            env: None,
            exe_dir: Some(&with),
            build_tree: &file,
        };
        let error = find_in(&places).unwrap_err().to_string();
        assert_eq!(error, format!("--filter {}: no such file", typo.display()));
        let places = Places {
            flag: None,
            env: Some(&typo),
            ..places
        };
        let error = find_in(&places).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("$ROLLOUT_FILTER={}: no such file", typo.display())
        );
    }

    #[test]
    fn nothing_found_names_every_place_and_how_to_point_at_a_filter() {
        let (_, without) = folders("none");
        let build_tree = Path::new("/nonexistent/target/wasm32-wasip1/wasm/rollout_filter.wasm");
        let places = Places {
            flag: None,
            env: None,
            exe_dir: Some(&without),
            build_tree,
        };
        let error = find_in(&places).unwrap_err().to_string();
        for part in [
            "--filter FILE (not given)",
            "$ROLLOUT_FILTER (not set)",
            &format!(
                "{} (next to the rollout executable: missing)",
                without.join("rollout_filter.wasm").display()
            ),
            "/nonexistent/target/wasm32-wasip1/wasm/rollout_filter.wasm (the build tree rollout was built in: missing)",
            "cargo build --profile wasm -p rollout-filter --target wasm32-wasip1",
            "set ROLLOUT_FILTER=FILE",
        ] {
            assert!(error.contains(part), "{part:?} not in {error}");
        }
    }
}
