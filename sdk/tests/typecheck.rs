//! `mypy --strict` over the task scripts authors start from, against the `walle` module's stubs
//! (`sdk/stubs/walle/__init__.pyi`): every example's `main.py` with `MYPYPATH=sdk/stubs`, and the
//! folder `walle task init` creates, checked from inside it as an editor would (its `.mypy.ini`
//! points mypy at its own copy of the stubs in `typings/`). A type error in a script or in the
//! stubs fails the test with mypy's messages. mypy comes from the test venv (`WALLE_PY_ENV`,
//! default `~/.cache/walle-py`), which `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

mod support;
use support::{binary, python_tool};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `mypy --strict FILE` in `dir` (its cache in a temporary directory, so nothing is written
/// next to the sources) with `MYPYPATH` set if given; mypy's report if it found errors.
fn mypy(dir: &Path, file: &Path, mypy_path: Option<&Path>) -> Result<(), String> {
    let mypy = python_tool("mypy");
    let cache = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(&mypy);
    command
        .args(["--strict", "--cache-dir"])
        .arg(cache.path())
        .arg(file)
        .current_dir(dir)
        .env_remove("MYPYPATH");
    if let Some(path) = mypy_path {
        command.env("MYPYPATH", path);
    }
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot start {mypy} ({e}); run scripts/setup.sh, which installs it")
    });
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "mypy --strict {} (in {}) failed:\n{}{}",
        file.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[test]
fn the_example_scripts_type_check_against_the_stubs() {
    let stubs = repo().join("sdk/stubs").canonicalize().unwrap();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/tasks"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("main.py"))
        .filter(|script| script.exists())
        .collect();
    scripts.sort();
    assert!(
        scripts.len() >= 3,
        "the Python examples are missing: {scripts:?}"
    );
    // Run from an empty directory so that no configuration file but ours is read.
    let cwd = tempfile::tempdir().unwrap();
    let failures: Vec<String> = scripts
        .iter()
        .filter_map(|script| mypy(cwd.path(), &script.canonicalize().unwrap(), Some(&stubs)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_task_folder_from_walle_task_init_type_checks_in_place() {
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary("walle"))
        .args(["task", "init", "fresh-task"])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "walle task init failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let folder = root.path().join("fresh-task");
    assert!(
        folder.join(".mypy.ini").exists() && folder.join("typings/walle/__init__.pyi").exists(),
        "walle task init no longer sets up the stubs for type checkers"
    );
    if let Err(report) = mypy(&folder, Path::new("main.py"), None) {
        panic!("{report}");
    }
}
