"""Walle's host module: tensors, the bundle's models, the trigger context, uploads, per-task
state and logging. Pure Python over a few native calls (the names starting with `_host_`),
which the VM puts into this module's namespace before running it."""

__all__ = ["Tensor", "tensor", "zeros", "nn", "llm", "context", "upload", "state", "log"]

_DTYPES = ("f32", "i64")


def _flatten(data, shape, depth):
    # Nested lists to a flat list, checking that every level is rectangular.
    if isinstance(data, (list, tuple)):
        if len(shape) <= depth:
            shape.append(len(data))
        elif shape[depth] != len(data):
            raise ValueError("ragged nested list: dimension %d has lengths %d and %d"
                             % (depth, shape[depth], len(data)))
        flat = []
        for item in data:
            flat.extend(_flatten(item, shape, depth + 1))
        return flat
    if len(shape) > depth:
        raise ValueError("ragged nested list: a number where dimension %d expects a list" % depth)
    if isinstance(data, bool) or not isinstance(data, (int, float)):
        raise TypeError("tensor values must be numbers, not %s" % type(data).__name__)
    return [data]


def _product(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _cast(values, dtype):
    if dtype == "f32":
        return [float(v) for v in values]
    return [int(v) for v in values]


class Tensor:
    """A dense row-major tensor of f32 or i64 values."""

    __slots__ = ("shape", "dtype", "data")

    def __init__(self, data, shape=None, dtype="f32"):
        if dtype not in _DTYPES:
            raise ValueError("dtype must be one of %s, not %r" % (_DTYPES, dtype))
        if shape is None:
            found = []
            flat = _flatten(data, found, 0)
            shape = found
        else:
            flat = list(data)
            shape = [int(d) for d in shape]
            if _product(shape) != len(flat):
                raise ValueError("shape %s holds %d values, not %d"
                                 % (shape, _product(shape), len(flat)))
        self.shape = tuple(shape)
        self.dtype = dtype
        self.data = _cast(flat, dtype)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return len(self.data)

    def tolist(self):
        """The values as nested lists (a number for a 0-d tensor)."""
        if not self.shape:
            return self.data[0]
        return self._nest(0, 0)

    def _nest(self, axis, start):
        if axis == len(self.shape) - 1:
            return self.data[start:start + self.shape[axis]]
        step = _product(self.shape[axis + 1:])
        return [self._nest(axis + 1, start + i * step) for i in range(self.shape[axis])]

    def reshape(self, *shape):
        """The same values under another shape; one dimension may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = shape[0]
        shape = [int(d) for d in shape]
        if shape.count(-1) > 1:
            raise ValueError("only one dimension may be -1")
        if -1 in shape:
            known = _product([d for d in shape if d != -1])
            if known == 0 or self.size % known:
                raise ValueError("cannot reshape %d values into %s" % (self.size, shape))
            shape[shape.index(-1)] = self.size // known
        return Tensor(self.data, shape, self.dtype)

    def astype(self, dtype):
        return Tensor(self.data, self.shape, dtype)

    def _zip(self, other, op, name):
        if isinstance(other, Tensor):
            if other.shape != self.shape:
                raise ValueError("%s of shapes %s and %s" % (name, self.shape, other.shape))
            values = [op(a, b) for a, b in zip(self.data, other.data)]
            dtype = "f32" if "f32" in (self.dtype, other.dtype) else "i64"
        elif isinstance(other, (int, float)) and not isinstance(other, bool):
            values = [op(a, other) for a in self.data]
            dtype = "f32" if isinstance(other, float) else self.dtype
        else:
            return NotImplemented
        if name == "division":
            dtype = "f32"
        return Tensor(values, self.shape, dtype)

    def __add__(self, other):
        return self._zip(other, lambda a, b: a + b, "sum")

    def __sub__(self, other):
        return self._zip(other, lambda a, b: a - b, "difference")

    def __mul__(self, other):
        return self._zip(other, lambda a, b: a * b, "product")

    def __truediv__(self, other):
        return self._zip(other, lambda a, b: a / b, "division")

    def __radd__(self, other):
        return self._zip(other, lambda a, b: b + a, "sum")

    def __rsub__(self, other):
        return self._zip(other, lambda a, b: b - a, "difference")

    def __rmul__(self, other):
        return self._zip(other, lambda a, b: b * a, "product")

    def __neg__(self):
        return Tensor([-v for v in self.data], self.shape, self.dtype)

    def sum(self):
        return sum(self.data)

    def mean(self):
        if not self.data:
            raise ValueError("mean of an empty tensor")
        return sum(self.data) / len(self.data)

    def max(self):
        return max(self.data)

    def min(self):
        return min(self.data)

    def argmax(self):
        """The flat index of the largest value."""
        best = 0
        for i, v in enumerate(self.data):
            if v > self.data[best]:
                best = i
        return best

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __eq__(self, other):
        return (isinstance(other, Tensor) and self.shape == other.shape
                and self.data == other.data)

    def __repr__(self):
        return "Tensor(shape=%s, dtype=%s)" % (list(self.shape), self.dtype)


def tensor(data, dtype="f32"):
    """A tensor from (nested) lists of numbers."""
    return Tensor(data, None, dtype)


def zeros(shape, dtype="f32"):
    return Tensor([0] * _product(shape), shape, dtype)


def _as_tensor(value, name):
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return tensor(value)
    raise TypeError("input %r must be a walle.Tensor or a list, not %s"
                    % (name, type(value).__name__))


class Model:
    """A model of the task's bundle, run on the device's inference engine."""

    __slots__ = ("name", "inputs", "outputs")

    def __init__(self, name, inputs, outputs):
        self.name = name
        self.inputs = inputs
        self.outputs = outputs

    def run(self, inputs):
        """Runs the model on {input name: Tensor}; returns {output name: Tensor}."""
        if not isinstance(inputs, dict):
            raise TypeError("model.run takes a dict of input name to tensor")
        given = {}
        for name, value in inputs.items():
            t = _as_tensor(value, name)
            given[name] = (list(t.shape), t.data, t.dtype)
        produced = _host_nn_run(self.name, given)
        return {name: Tensor(data, shape, dtype) for name, (shape, data, dtype) in produced.items()}

    def __repr__(self):
        return "Model(%r, inputs=%s, outputs=%s)" % (self.name, self.inputs, self.outputs)


class _NN:
    """`walle.nn`: the bundle's models."""

    def load(self, name):
        """The bundle's model `name` (its file name without `.onnx`)."""
        inputs, outputs = _host_nn_describe(name)
        return Model(name, inputs, outputs)


nn = _NN()


_GENERATE_OPTIONS = ("max_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
                     "seed", "stop")


def _options(given):
    unknown = sorted(set(given) - set(_GENERATE_OPTIONS))
    if unknown:
        raise TypeError("unknown generation option(s) %s; the options are %s"
                        % (", ".join(unknown), ", ".join(_GENERATE_OPTIONS)))
    return {k: v for k, v in given.items() if v is not None}


class LLM:
    """A language model of the task's bundle (a GGUF file), run on the device's engine.

    Each call is a conversation of its own. Generation stops at the model's end of turn, a stop
    string, or max_tokens; the run's deadline and memory budget stop it too."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def generate(self, prompt, **options):
        """The model's continuation of `prompt` (special tokens such as <|im_start|> are
        read as such). Options: max_tokens (64), temperature (0: greedy), top_k (0: all),
        top_p (1.0), repetition_penalty (1.0), seed (0), stop (a string or a list)."""
        text, _tokens, _finish = _host_llm_generate(self.name, str(prompt), _options(options))
        return text

    def chat(self, messages, **options):
        """The assistant's answer to `messages`: a string (the user's turn) or a list of
        {"role": "system" | "user", "content": str} with one user message."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        pairs = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise TypeError("chat messages are {\"role\": ..., \"content\": str} dicts")
            pairs.append([str(m.get("role", "user")), m["content"]])
        return self.generate(_host_llm_chat_prompt(self.name, pairs), **options)

    def tokenize(self, text):
        """The token ids of `text` (as plain text: no special tokens)."""
        return _host_llm_tokenize(self.name, str(text))

    def score(self, text):
        """The log-likelihood (natural log) of `text`'s tokens after its first, each given
        those before it: higher is likelier."""
        log_likelihood, _tokens = _host_llm_score(self.name, str(text))
        return log_likelihood

    def __repr__(self):
        return "LLM(%r)" % (self.name,)


class _LLMs:
    """`walle.llm`: the bundle's language models."""

    def load(self, name, context=2048):
        """The bundle's language model `name` (its file name without `.gguf`), with room for
        `context` tokens per conversation. Its weights and cache count in the task's memory."""
        _host_llm_load(name, int(context))
        return LLM(name)

    def stats(self):
        """{"weight_bytes", "cache_bytes"} of the task's loaded language models."""
        return _host_llm_stats()


llm = _LLMs()


def context():
    """The trigger context: the matched events, the window and the declared features."""
    return _host_context()


def upload(record):
    """Sends a JSON-like record to the cloud through the tunnel."""
    _host_upload(record)


def log(*parts, level="info"):
    """Logs the parts, joined by spaces, at `level` (debug, info, warn, error)."""
    _host_log(level, " ".join(str(p) for p in parts))


class _State:
    """`walle.state`: the task's persistent key-value store (JSON-like values)."""

    def get(self, key, default=None):
        value = _host_state_get(key)
        return default if value is None else value

    def set(self, key, value):
        _host_state_set(key, value)

    def delete(self, key):
        _host_state_set(key, None)

    def __getitem__(self, key):
        value = _host_state_get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        _host_state_set(key, value)

    def __delitem__(self, key):
        _host_state_set(key, None)

    def __contains__(self, key):
        return _host_state_get(key) is not None


state = _State()
