//! Gathers the pure-Python halves of the whitelisted modules from `rustpython-pylib`'s `Lib/`
//! (CPython's standard library as RustPython ships it) into `OUT_DIR/pylib`, with the few
//! changes the sandbox needs, beside Walle's own Python modules (`_walle_setup.py`, and `re`,
//! whose native half is `src/regex`); `src/sandbox/mod.rs` freezes that directory into the
//! binary. Nothing of the standard library is copied into the repository.

use std::fs;
use std::path::{Path, PathBuf};

/// The files of `Lib/` the whitelist needs at import time; everything else stays out.
const MODULES: &[&str] = &[
    "_collections_abc.py",
    "abc.py",
    "bisect.py",
    "collections/__init__.py",
    "collections/_defaultdict.py",
    "enum.py",
    "functools.py",
    "heapq.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "keyword.py",
    "operator.py",
    "random.py",
    "reprlib.py",
    "types.py",
];

/// Walle's own modules: (source in this crate, file in the frozen directory).
const OWN: &[(&str, &str)] = &[
    ("src/sandbox/_walle_setup.py", "_walle_setup.py"),
    ("src/regex/re.py", "re.py"),
];

/// Changes to `random.py`: there is no `os` (entropy comes from `_random.Random()`, which seeds
/// itself from the host's entropy source), string seeds hash with the native `_sha512` instead of
/// `_sha2`/`hashlib`, and there is no fork hook.
const RANDOM_PATCHES: &[(&str, &str)] = &[
    (
        "from os import urandom as _urandom\n",
        "# Walle sandbox: there is no `os` module; fresh generators stand in for os.urandom().\n\
         def _urandom(n):\n    if n < 0:\n        raise ValueError(\"negative argument not allowed\")\n    \
         return _random.Random().getrandbits(n * 8).to_bytes(n, \"little\") if n else b\"\"\n",
    ),
    ("import os as _os\n", ""),
    (
        "                try:\n                    # hashlib is pretty heavy to load, try lean internal\n                    # module first\n                    from _sha2 import sha512 as _sha512\n                except ImportError:\n                    # fallback to official implementation\n                    from hashlib import sha512 as _sha512\n",
        "                # Walle sandbox: the native sha512 module, no hashlib.\n                from _sha512 import sha512 as _sha512\n",
    ),
    (
        "if hasattr(_os, \"fork\"):\n    _os.register_at_fork(after_in_child=_inst.seed)\n",
        "# Walle sandbox: no fork support (no `os`).\n",
    ),
];

fn main() {
    if let Err(e) = gather() {
        panic!("walle-vm build: {e}");
    }
}

fn gather() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let lib = Path::new(rustpython_pylib::LIB_PATH);
    let pylib = out.join("pylib");
    // Start empty: a module dropped from the lists must not stay frozen from an earlier build.
    if pylib.exists() {
        fs::remove_dir_all(&pylib).map_err(|e| format!("cannot clear {}: {e}", pylib.display()))?;
    }
    for module in MODULES {
        let mut source = read(&lib.join(module))?;
        if *module == "random.py" {
            source = patched(source, RANDOM_PATCHES, module)?;
        }
        write(&pylib.join(module), &source)?;
    }
    for (source, frozen) in OWN {
        let source = Path::new(source);
        println!("cargo::rerun-if-changed={}", source.display());
        write(&pylib.join(frozen), &read(source)?)?;
    }
    let freeze = format!(
        "rustpython_vm::py_freeze!(dir = {:?})\n",
        pylib.display().to_string()
    );
    write(&out.join("pylib_frozen.rs"), &freeze)
}

fn patched(mut source: String, patches: &[(&str, &str)], module: &str) -> Result<String, String> {
    for (from, to) in patches {
        if !source.contains(from) {
            return Err(format!(
                "{module} no longer contains {from:?}: update the patch"
            ));
        }
        source = source.replacen(from, to, 1);
    }
    Ok(source)
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
