"""Regular expressions for Walle tasks.

The interface of CPython 3.11's `re` module on Walle's own engine (`_walle_re`, fancy-regex
underneath), whose searches cannot run away with a task's time: a search that would backtrack
too much raises RuntimeError instead. See task-vm/src/regex/mod.rs for what differs from
CPython.
"""

import enum
import types

import _walle_re

__all__ = [
    "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer",
    "compile", "purge", "escape", "error", "Pattern", "Match", "A", "I", "L", "M", "S",
    "X", "U", "T", "ASCII", "IGNORECASE", "LOCALE", "MULTILINE", "DOTALL", "VERBOSE",
    "UNICODE", "TEMPLATE", "NOFLAG", "RegexFlag",
]

__version__ = "2.2.1"

# Larger than any string: the default `endpos`.
_MAXSIZE = (1 << 63) - 1


@enum.global_enum
class RegexFlag(enum.IntFlag, boundary=enum.KEEP):
    NOFLAG = 0
    ASCII = A = 256
    IGNORECASE = I = 2
    LOCALE = L = 4
    UNICODE = U = 32
    MULTILINE = M = 8
    DOTALL = S = 16
    VERBOSE = X = 64
    # Accepted and ignored, as in CPython 3.11 (where it is deprecated).
    TEMPLATE = T = 1
    DEBUG = 128
    __str__ = object.__str__
    _numeric_repr_ = hex


class error(Exception):
    """A regular expression that cannot be compiled, or a bad replacement template.

    msg is the bare message, pattern the pattern (or template), pos the index in it where the
    problem is (or None); lineno and colno locate pos when the pattern has several lines.
    """

    def __init__(self, msg, pattern=None, pos=None):
        self.msg = msg
        self.pattern = pattern
        self.pos = pos
        if pattern is not None and pos is not None:
            msg = '%s at position %d' % (msg, pos)
            newline = '\n' if isinstance(pattern, str) else b'\n'
            self.lineno = pattern.count(newline, 0, pos) + 1
            self.colno = pos - pattern.rfind(newline, 0, pos)
            if newline in pattern:
                msg = '%s (line %d, column %d)' % (msg, self.lineno, self.colno)
        else:
            self.lineno = self.colno = None
        super().__init__(msg)


PatternError = error

# Flag names in the order Pattern.__repr__ lists them.
_FLAG_NAMES = [
    (1, 're.TEMPLATE'), (2, 're.IGNORECASE'), (4, 're.LOCALE'), (8, 're.MULTILINE'), (16, 're.DOTALL'),
    (32, 're.UNICODE'), (64, 're.VERBOSE'), (128, 're.DEBUG'), (256, 're.ASCII'),
]


class Pattern:
    """A compiled regular expression (made by re.compile)."""

    __slots__ = ('_regex', '_pattern', '_groupindex', '__weakref__')

    def __new__(cls, *args, **kwargs):
        raise TypeError("cannot create 're.Pattern' instances")

    @property
    def pattern(self):
        """The pattern string the object was compiled from."""
        return self._pattern

    @property
    def flags(self):
        """The regex matching flags."""
        return self._regex.flags

    @property
    def groups(self):
        """The number of capturing groups."""
        return self._regex.groups

    @property
    def groupindex(self):
        """A mapping of group names to group numbers."""
        return types.MappingProxyType(self._groupindex)

    def search(self, string, pos=0, endpos=_MAXSIZE):
        """The first match anywhere in string[pos:endpos], or None."""
        found = self._regex.search(string, pos, endpos, 0)
        return None if found is None else _new_match(self, string, found)

    def match(self, string, pos=0, endpos=_MAXSIZE):
        """The match at pos, or None."""
        found = self._regex.search(string, pos, endpos, 1)
        return None if found is None else _new_match(self, string, found)

    def fullmatch(self, string, pos=0, endpos=_MAXSIZE):
        """The match of all of string[pos:endpos], or None."""
        found = self._regex.search(string, pos, endpos, 2)
        return None if found is None else _new_match(self, string, found)

    def findall(self, string, pos=0, endpos=_MAXSIZE):
        """A list of all non-overlapping matches (their groups, if the pattern has any)."""
        return self._regex.findall(string, pos, endpos)

    def finditer(self, string, pos=0, endpos=_MAXSIZE):
        """An iterator over the Match objects of all non-overlapping matches."""
        scanner = self._regex.scanner(string, pos, endpos)
        return iter(lambda: _next_match(self, string, scanner), None)

    def split(self, string, maxsplit=0):
        """string split at the matches, with the groups' text between the pieces."""
        return self._regex.split(string, maxsplit)

    def sub(self, repl, string, count=0):
        """string with its matches replaced by repl (a template or a function of the Match)."""
        return self._regex.sub(repl, string, count, self._match_factory(string), False)

    def subn(self, repl, string, count=0):
        """(new string, number of replacements), as sub() does them."""
        return self._regex.sub(repl, string, count, self._match_factory(string), True)

    def _match_factory(self, string):
        return lambda found: _new_match(self, string, found)

    def __repr__(self):
        flags = self.flags
        if isinstance(self._pattern, str) and flags & (4 | 32 | 256) == 32:
            flags &= ~32
        names = []
        for value, name in _FLAG_NAMES:
            if flags & value:
                names.append(name)
                flags &= ~value
        if flags:
            names.append(hex(flags))
        text = repr(self._pattern)[:200]
        if names:
            return 're.compile(%s, %s)' % (text, '|'.join(names))
        return 're.compile(%s)' % text

    def __eq__(self, other):
        if not isinstance(other, Pattern):
            return NotImplemented
        return (self._pattern == other._pattern and self.flags == other.flags
                and type(self._pattern) is type(other._pattern))

    def __hash__(self):
        return hash((self._pattern, self.flags))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("cannot pickle 're.Pattern' object in a Walle task")

    __class_getitem__ = classmethod(types.GenericAlias)


def _new_pattern(pattern, flags):
    self = object.__new__(Pattern)
    self._regex = _walle_re.compile(pattern, flags, error)
    self._pattern = pattern
    self._groupindex = dict(self._regex.names)
    return self


class Match:
    """The result of a successful search."""

    __slots__ = ('_re', '_string', '_found')

    def __new__(cls, *args, **kwargs):
        raise TypeError("cannot create 're.Match' instances")

    @property
    def re(self):
        """The Pattern that produced this match."""
        return self._re

    @property
    def string(self):
        """The string searched."""
        return self._string

    @property
    def pos(self):
        """Where the search started."""
        return self._found[0]

    @property
    def endpos(self):
        """Where the search stopped."""
        return self._found[1]

    @property
    def lastindex(self):
        """The number of the last group that matched, or None."""
        return self._found[2]

    @property
    def lastgroup(self):
        """The name of the last group that matched, or None."""
        last = self._found[2]
        if last is None:
            return None
        for name, index in self._re._groupindex.items():
            if index == last:
                return name
        return None

    @property
    def regs(self):
        """The span of every group, (-1, -1) for a group that did not match."""
        found = self._found
        return tuple((found[i], found[i + 1]) for i in range(3, len(found), 2))

    def _index(self, group):
        if isinstance(group, str):
            index = self._re._groupindex.get(group)
            if index is not None:
                return index
        else:
            try:
                index = group.__index__()
            except (AttributeError, TypeError):
                pass
            else:
                if 0 <= index <= self._re._regex.groups:
                    return index
        raise IndexError("no such group")

    def _group(self, group, default=None):
        i = 3 + 2 * self._index(group)
        found = self._found
        start = found[i]
        if start < 0:
            return default
        return self._string[start:found[i + 1]]

    def group(self, *groups):
        """The text of one group (0, the default, is the whole match), or a tuple of several."""
        if not groups:
            return self._group(0)
        if len(groups) == 1:
            return self._group(groups[0])
        return tuple(self._group(g) for g in groups)

    def __getitem__(self, group):
        return self._group(group)

    def groups(self, default=None):
        """The text of every group, default for those that did not match."""
        return tuple(self._group(g, default) for g in range(1, self._re._regex.groups + 1))

    def groupdict(self, default=None):
        """The text of every named group by name, default for those that did not match."""
        return {name: self._group(index, default)
                for name, index in self._re._groupindex.items()}

    def start(self, group=0):
        """Where a group's match starts, or -1."""
        return self._found[3 + 2 * self._index(group)]

    def end(self, group=0):
        """Where a group's match ends, or -1."""
        return self._found[4 + 2 * self._index(group)]

    def span(self, group=0):
        """(start, end) of a group's match, or (-1, -1)."""
        i = 3 + 2 * self._index(group)
        return (self._found[i], self._found[i + 1])

    def expand(self, template):
        """template with its group references replaced, as sub() would."""
        empty = self._string[:0]
        parts = []
        for piece in self._re._regex.template(template):
            if isinstance(piece, int):
                text = self._group(piece)
                parts.append(empty if text is None else text)
            elif isinstance(piece, type(empty)):
                parts.append(piece)
            else:
                raise TypeError('sequence item %d: expected %s, %s found' % (
                    len(parts), 'str instance' if isinstance(empty, str)
                    else 'a bytes-like object', type(piece).__name__))
        return empty.join(parts)

    def __repr__(self):
        return '<re.Match object; span=(%d, %d), match=%s>' % (
            self._found[3], self._found[4], repr(self._group(0))[:50])

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    __class_getitem__ = classmethod(types.GenericAlias)


def _new_match(pattern, string, found):
    self = object.__new__(Match)
    self._re = pattern
    self._string = string
    self._found = found
    return self


def _next_match(pattern, string, scanner):
    found = scanner.next()
    return None if found is None else _new_match(pattern, string, found)


# Compiled patterns by (type, pattern, flags); the oldest goes first when it is full.
_cache = {}
_MAXCACHE = 64


def _compile(pattern, flags):
    if isinstance(flags, RegexFlag):
        flags = flags.value
    key = (type(pattern), pattern, flags)
    try:
        return _cache[key]
    except (KeyError, TypeError):
        pass
    if isinstance(pattern, Pattern):
        if flags:
            raise ValueError("cannot process flags argument with a compiled pattern")
        return pattern
    if not isinstance(pattern, (str, bytes)):
        raise TypeError("first argument must be string or compiled pattern")
    compiled = _new_pattern(pattern, flags)
    if not flags & DEBUG:
        if len(_cache) >= _MAXCACHE:
            del _cache[next(iter(_cache))]
        _cache[key] = compiled
    return compiled


def compile(pattern, flags=0):
    """Compile a regular expression pattern, returning a Pattern object."""
    return _compile(pattern, flags)


def search(pattern, string, flags=0):
    """The first match of pattern anywhere in string, or None."""
    return _compile(pattern, flags).search(string)


def match(pattern, string, flags=0):
    """The match of pattern at the start of string, or None."""
    return _compile(pattern, flags).match(string)


def fullmatch(pattern, string, flags=0):
    """The match of pattern with all of string, or None."""
    return _compile(pattern, flags).fullmatch(string)


def split(pattern, string, maxsplit=0, flags=0):
    """string split at the occurrences of pattern."""
    return _compile(pattern, flags).split(string, maxsplit)


def findall(pattern, string, flags=0):
    """A list of all non-overlapping matches in string."""
    return _compile(pattern, flags).findall(string)


def finditer(pattern, string, flags=0):
    """An iterator over the Match objects of all non-overlapping matches in string."""
    return _compile(pattern, flags).finditer(string)


def sub(pattern, repl, string, count=0, flags=0):
    """string with the matches of pattern replaced by repl."""
    return _compile(pattern, flags).sub(repl, string, count)


def subn(pattern, repl, string, count=0, flags=0):
    """(new string, number of replacements), as sub() does them."""
    return _compile(pattern, flags).subn(repl, string, count)


def purge():
    """Clear the cache of compiled patterns."""
    _cache.clear()


# What escape() puts a backslash before.
_SPECIAL = '()[]{}?*+-|^$\\.&~# \t\n\r\v\f'
_SPECIAL_MAP = {ord(c): '\\' + c for c in _SPECIAL}
_SPECIAL_BYTES = frozenset(_SPECIAL.encode('ascii'))


def escape(pattern):
    """pattern with every character that is special in a regular expression escaped."""
    if isinstance(pattern, str):
        return pattern.translate(_SPECIAL_MAP)
    escaped = bytearray()
    for byte in pattern:
        if byte in _SPECIAL_BYTES:
            escaped.append(92)
        escaped.append(byte)
    return bytes(escaped)
