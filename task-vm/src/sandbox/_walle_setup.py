"""Walle's own part of every task interpreter: the task's bundled modules and its log.

Not vendored: written for the sandbox. Imported once, by the VM, when an interpreter is built.
"""

import sys
import _codecs
# Initialises the hash object types `_sha512` (random's string seeds) returns; using them before
# `_hashlib` was imported would panic the interpreter.
import _hashlib
import _walle_sandbox
import codecs
from _frozen_importlib import ModuleSpec


class BundleFinder:
    """Finds the task's own modules among the sources its bundle carried, and nothing else."""

    def __init__(self, sources):
        # {dotted name: (path in the bundle, source text, is a package)}
        self._sources = sources

    def find_spec(self, name, path=None, target=None):
        entry = self._sources.get(name)
        if entry is None:
            return None
        return ModuleSpec(name, self, origin=entry[0], is_package=entry[2])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        path, source, is_package = self._sources[module.__name__]
        module.__file__ = path
        if is_package:
            module.__path__ = []
        exec(compile(source, path, "exec"), module.__dict__)


class LogSink:
    """`sys.stdout`/`sys.stderr`: text goes to the run's capped log."""

    def write(self, text):
        _walle_sandbox.write(text)
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


_LATIN_1 = ("latin_1", "latin1", "latin-1", "iso8859_1", "iso8859-1", "iso_8859_1", "iso-8859-1", "l1")


def _find_codec(name):
    """Latin-1, which `re` needs; the VM itself knows only ASCII and UTF-8 (no `encodings`)."""
    if name.lower() in _LATIN_1:
        return codecs.CodecInfo(
            _codecs.latin_1_encode, _codecs.latin_1_decode, name="iso8859-1"
        )
    return None


def install(sources):
    codecs.register(_find_codec)
    sys.meta_path.append(BundleFinder(sources))
    sys.stdout = sys.stderr = LogSink()
    sys.stdin = None
