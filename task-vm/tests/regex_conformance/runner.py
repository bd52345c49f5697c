# Runs the conformance corpus (corpus.py, prepended to this file) with whatever `re` is
# importable and returns one JSON-ready result per case. The same text runs in CPython (the
# expected results) and in a Walle task (the results under test); tests/regex_conformance.rs
# compares them.

import re

REPLACERS = {
    'upper': lambda m: m.group(0).upper(),
    'span': lambda m: '%d-%d' % m.span(),
    'none': lambda m: None,
    'groups': lambda m: '|'.join(g or '_' for g in m.groups()),
    'last': lambda m: '%s/%s' % (m.lastindex, m.lastgroup),
    'bupper': lambda m: m.group(0).upper(),
    'blen': lambda m: b'%d' % len(m.group(0)),
    'int': lambda m: 1,
}


def value(v):
    """A JSON-ready rendering of a result (str, bytes and surrogates kept apart)."""
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            return {'code points': [ord(c) for c in v]}
        return v
    if isinstance(v, (bytes, bytearray)):
        return {'bytes': list(v)}
    if isinstance(v, (tuple, list)):
        return [value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): value(x) for k, x in v.items()}
    if isinstance(v, re.Match):
        return summary(v)
    return {'type': type(v).__name__}


def summary(m):
    groups = m.re.groups
    return {
        'span': list(m.span()),
        'match': value(m.group()),
        'groups': value(m.groups()),
        'groupdict': value(m.groupdict()),
        'spans': [list(m.span(i)) for i in range(groups + 1)],
        'lastindex': m.lastindex,
        'lastgroup': m.lastgroup,
        'pos': m.pos,
        'endpos': m.endpos,
    }


def replacement(repl):
    if isinstance(repl, tuple):
        return REPLACERS[repl[1]]
    return repl


def perform(case):
    op = case[0]
    if op == 'escape':
        return re.escape(case[1])
    if op == 'eval':
        return eval(case[1], {'re': re})
    pattern, flags = case[1], case[2]
    compiled = re.compile(pattern, flags)
    if op == 'compile':
        return {'groups': compiled.groups, 'groupindex': dict(compiled.groupindex),
                'flags': compiled.flags, 'repr': repr(compiled)}
    if op in ('search', 'match', 'fullmatch', 'findall', 'finditer'):
        result = getattr(compiled, op)(*case[3:])
        return list(result) if op == 'finditer' else result
    if op == 'split':
        return compiled.split(*case[3:])
    if op in ('sub', 'subn'):
        repl, string = case[3], case[4]
        return getattr(compiled, op)(replacement(repl), string, *case[5:])
    if op == 'expand':
        m = compiled.search(case[3])
        return None if m is None else m.expand(case[4])
    if op == 'module':
        # The module-level functions: re.<name>(pattern, ...).
        name, args = case[3], case[4:]
        if name in ('sub', 'subn'):
            return getattr(re, name)(pattern, replacement(args[0]), *args[1:], flags=flags)
        return getattr(re, name)(pattern, *args, flags=flags)
    raise ValueError('unknown op %r' % op)


def outcome(case):
    try:
        return {'ok': value(perform(case))}
    except Exception as e:
        return {'error': type(e).__name__, 'message': str(e),
                'pos': getattr(e, 'pos', None)}


def expand_cases():
    cases = []
    for pattern, flags, strings in SEARCHES:
        template = b'<\\g<0>>' if isinstance(pattern, bytes) else '<\\g<0>>'
        for string in strings:
            for op in ('search', 'match', 'fullmatch', 'findall', 'finditer', 'split'):
                cases.append((op, pattern, flags, string))
            cases.append(('sub', pattern, flags, template, string))
    return cases + CASES


def results():
    return [{'case': repr(case), 'result': outcome(case)} for case in expand_cases()]
