"""Type stubs of `walle`, the host module a Walle task's Python script imports.

The module exists only inside the task VM (it is `task-vm/src/walle.py` over native calls); these
stubs let editors and type checkers (pyright, mypy) know its names, types and errors. Point them
here: pyright's `stubPath`, or `MYPYPATH` for mypy (`walle task init` writes them where both
look).

Names marked "type checking only" (`Context`, `Event`, `Json`, …) describe the values the host
hands over and accepts; they do not exist at run time. The task VM cannot import `typing`, so use
them in quoted annotations after `import walle`::

    import walle

    def run(ctx: "walle.Context") -> "walle.JsonLike":
        ...

Errors: a host call that fails raises `RuntimeError` carrying the host's message (`task
NAME@VERSION: model ranker: ...`); arguments that cannot be sent raise `TypeError` or
`ValueError`. Calling `context`, `upload`, `log`, `state` or `nn` while the entry script is being
loaded (at import time, outside a run) raises `RuntimeError("walle host calls work only while the
task runs")`. Two failures end the run whatever the script does, even if it catches the
exception: uploads past the task's output limit and a failing state store.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias, TypedDict, overload

__all__ = ["Tensor", "tensor", "zeros", "nn", "llm", "context", "upload", "state", "log"]

# ---------------------------------------------------------------------------------------------
# Type checking only: the shapes of what the host hands over and accepts.

DType: TypeAlias = Literal["f32", "i64"]
"""Element type of a `Tensor`: 32-bit float or 64-bit integer. Type checking only."""

LogLevel: TypeAlias = Literal["debug", "info", "warn", "warning", "error"]
"""A log line's level (`warning` is `warn`). Type checking only."""

EventKind: TypeAlias = Literal["enter", "exit", "click", "expose", "scroll", "custom"]
"""What the user did. Type checking only."""

ArgValue: TypeAlias = str | int | float | bool
"""An event argument: a typed scalar (never null, a list or an object). Type checking only."""

FeatureValue: TypeAlias = int | float | str | bool | None
"""A feature's value: a number for count/sum/avg/min/max/distinct_count/duration, the field's
value for first/last; `None` when the window holds no value (a sum beyond f64 too). Type
checking only."""

Json: TypeAlias = None | bool | int | float | str | list["Json"] | dict[str, "Json"]
"""A JSON value as the host gives it back (tuples come back as lists). Type checking only."""

JsonLike: TypeAlias = (
    None | bool | int | float | str | Sequence["JsonLike"] | Mapping[str, "JsonLike"]
)
"""What the host accepts as a record or a state value: None, bool, int (64-bit), float (finite),
str, list, tuple and dict with str keys, nested at most 64 levels. A handler returns one too:
`None` for no record, a list for several records, anything else for one. Type checking only."""

NestedNumbers: TypeAlias = float | Sequence["NestedNumbers"]
"""A number or a rectangular nest of lists of numbers (`[[1, 2], [3, 4]]`). Type checking only."""


class Event(TypedDict):
    """One user-behaviour event as a task sees it. Type checking only."""

    id: str
    """Unique (per device) id chosen by the host app."""
    ts: int
    """Event time, Unix milliseconds."""
    session: str
    """App session the event belongs to."""
    page: str
    """Page (screen) it happened on, e.g. `item`, `feed`."""
    event: EventKind
    """What happened."""
    item: str
    """Item (e.g. product id) it concerns; empty when none."""
    args: dict[str, ArgValue]
    """Typed scalar arguments (at most 64)."""


class Context(TypedDict):
    """The trigger context a run gets (the handler's argument, and `walle.context()`).

    Type checking only."""

    task: str
    """The task's name."""
    trigger: str
    """The `[[triggers]]` name that matched, or the `[[timers]]` name for a timer run."""
    matched: list[Event]
    """The events the trigger's positive steps took, in step order (a `one_or_more` step keeps
    its last 64); empty for a timer run."""
    window: list[Event]
    """Every event of the trigger's partition from the first matched event to the last, in
    arrival order (at most the last 512); empty for a timer run."""
    features: dict[str, FeatureValue]
    """Every `[[features]]` of the manifest by name, computed for this firing."""


# ---------------------------------------------------------------------------------------------
# Tensors.


class Tensor:
    """A dense row-major tensor of f32 or i64 values, held as Python numbers.

    Tensors are for feeding models and reading their outputs: arithmetic is elementwise in
    Python (no broadcasting, no matrix product), so keep heavy maths in the model."""

    shape: tuple[int, ...]
    """The size of each dimension; `()` for a 0-d tensor."""
    dtype: DType
    """`"f32"` or `"i64"`."""
    data: list[float] | list[int]
    """The values, flat, row-major (floats for f32, ints for i64)."""
    __hash__: ClassVar[None]  # type: ignore[assignment]

    @overload
    def __init__(self, data: NestedNumbers, shape: None = None, dtype: DType = "f32") -> None:
        """A tensor from nested lists of numbers, its shape read from the nesting.

        Raises `ValueError` for a ragged nest or an unknown dtype, `TypeError` for a value that
        is not an int or a float (bools are refused). f32 values are converted with `float`,
        i64 values with `int` (truncating)."""

    @overload
    def __init__(self, data: Iterable[float], shape: Sequence[int], dtype: DType = "f32") -> None:
        """A tensor of the flat `data` under `shape`.

        Raises `ValueError` when `shape` does not hold exactly `len(data)` values or the dtype
        is unknown."""

    @property
    def ndim(self) -> int:
        """The number of dimensions."""

    @property
    def size(self) -> int:
        """The number of values."""

    def tolist(self) -> Any:
        """The values as nested lists (a number for a 0-d tensor)."""

    @overload
    def reshape(self, shape: Sequence[int], /) -> "Tensor":
        """The same values under another shape; one dimension may be -1."""

    @overload
    def reshape(self, *shape: int) -> "Tensor":
        """The same values under another shape; one dimension may be -1.

        Raises `ValueError` when the sizes do not match or more than one dimension is -1."""

    def astype(self, dtype: DType) -> "Tensor":
        """A copy with values converted to `dtype` (i64 truncates floats toward zero)."""

    def __add__(self, other: "Tensor | float") -> "Tensor":
        """Elementwise sum with a tensor of the same shape or a number.

        Raises `ValueError` on different shapes. The result is f32 when either side is f32 (or
        the number is a float), else i64."""

    def __sub__(self, other: "Tensor | float") -> "Tensor":
        """Elementwise difference; shapes and dtypes as for `+`."""

    def __mul__(self, other: "Tensor | float") -> "Tensor":
        """Elementwise product; shapes and dtypes as for `+`."""

    def __truediv__(self, other: "Tensor | float") -> "Tensor":
        """Elementwise division, always f32. Raises `ZeroDivisionError` on a zero divisor."""

    def __radd__(self, other: float) -> "Tensor":
        """`number + tensor`."""

    def __rsub__(self, other: float) -> "Tensor":
        """`number - tensor`."""

    def __rmul__(self, other: float) -> "Tensor":
        """`number * tensor`."""

    def __neg__(self) -> "Tensor":
        """Every value negated."""

    def sum(self) -> float:
        """The sum of all values (an int for i64)."""

    def mean(self) -> float:
        """The mean of all values. Raises `ValueError` for an empty tensor."""

    def max(self) -> float:
        """The largest value. Raises `ValueError` for an empty tensor."""

    def min(self) -> float:
        """The smallest value. Raises `ValueError` for an empty tensor."""

    def argmax(self) -> int:
        """The flat index of the largest value (the first one on ties)."""

    def __len__(self) -> int:
        """The size of the first dimension. Raises `TypeError` for a 0-d tensor."""

    def __eq__(self, other: object) -> bool:
        """Whether `other` is a tensor with the same shape and values (dtype aside)."""

    def __repr__(self) -> str:
        """`Tensor(shape=[2, 3], dtype=f32)`."""


def tensor(data: NestedNumbers, dtype: DType = "f32") -> Tensor:
    """A tensor from (nested) lists of numbers: `walle.tensor([[1, 2], [3, 4]], dtype="i64")`.

    Raises `ValueError` for a ragged nest or an unknown dtype, `TypeError` for a value that is
    not an int or a float."""


def zeros(shape: Sequence[int], dtype: DType = "f32") -> Tensor:
    """A tensor of zeros of `shape`. Its values count in the task's memory budget: a huge
    shape ends the run with a `MemoryError`."""


# ---------------------------------------------------------------------------------------------
# Models.


class Model:
    """An ONNX model of the task's bundle, loaded into the device's inference engine.

    Get one with `walle.nn.load`; a model is loaded once per task and kept between runs."""

    name: str
    """The model's name: its file name without `.onnx`."""
    inputs: list[list[Any]]
    """The graph inputs, each `[name, dtype, dims]`: `dtype` is `"f32"` or `"i64"`, `dims` a
    list with an int per fixed dimension and `None` per dynamic one."""
    outputs: list[str]
    """The graph outputs' names."""

    def __init__(self, name: str, inputs: list[list[Any]], outputs: list[str]) -> None:
        """Made by `walle.nn.load`; constructing one yourself loads nothing."""

    def run(
        self, inputs: dict[str, Tensor] | dict[str, Tensor | Sequence[NestedNumbers]]
    ) -> dict[str, Tensor]:
        """Runs the model on `{input name: tensor}` (a nested list is read as an f32 tensor);
        returns `{output name: tensor}`.

        Runs on the calling task's thread, under its deadline and memory budget: the engine
        checks between nodes and refuses a node whose output would not fit the budget (the run
        then ends with the limit's error). Raises `TypeError` when `inputs` is not a dict or a
        value is neither a tensor nor a list, and `RuntimeError("task ...: model NAME: ...")`
        when the engine refuses the inputs (a missing input, a wrong shape or dtype) or fails
        while running."""

    def __repr__(self) -> str:
        """`Model('ranker', inputs=[...], outputs=[...])`."""


class _NN:
    """The type of `walle.nn`."""

    def load(self, name: str) -> Model:
        """The bundle's model `name`: the file name of one of the manifest's `models` without
        its directory and `.onnx` (`models/ranker.onnx` is `"ranker"`).

        The model is parsed and optimised on first use (that time and memory count in the
        run's limits) and kept for later runs. Raises `RuntimeError` when the bundle has no
        such model (the message lists the ones it has) or the engine cannot load it (an
        unsupported operator, a malformed file)."""


nn: _NN
"""The bundle's models: `walle.nn.load("ranker").run({"x": walle.tensor(...)})`."""


class ChatMessage(TypedDict):
    """One message of `LLM.chat`."""

    role: Literal["system", "user"]
    content: str


class LLMStats(TypedDict):
    """What `walle.llm.stats()` reports, in bytes."""

    weight_bytes: int
    cache_bytes: int


class LLM:
    """A language model (GGUF file) of the task's bundle, run on the device's engine.

    Get one with `walle.llm.load`. Each `generate`, `chat` and `score` is a conversation of
    its own. Everything runs on the task's thread, under its deadline and memory budget: the
    prompt is evaluated in chunks and the answer token by token, and a run past its deadline
    or budget stops within one of them with the limit's error."""

    name: str
    """The model's name: its file name without `.gguf`."""

    def __init__(self, name: str) -> None:
        """Made by `walle.llm.load`; constructing one yourself loads nothing."""

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: str | list[str] | None = None,
    ) -> str:
        """The model's continuation of `prompt`, whose special tokens (`<|im_start|>`, …) are
        read as such. Stops at the model's end of turn, at a stop string (not included), or
        after `max_tokens`. `temperature` 0 is greedy; `top_k` 0 keeps every token; `seed`
        makes sampling repeatable. Raises `TypeError` for an unknown option and `ValueError`
        for an out-of-range one (`top_p` outside 0..1)."""

    def chat(
        self,
        messages: str | list[ChatMessage],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: str | list[str] | None = None,
    ) -> str:
        """The assistant's answer to one user turn (a string, or one `user` message and at
        most one `system` message), written with the model's chat template."""

    def tokenize(self, text: str) -> list[int]:
        """The token ids of `text`, read as plain text."""

    def score(self, text: str) -> float:
        """The natural-log likelihood of `text`'s tokens after the first, each given the ones
        before it: higher is likelier (compare texts of similar length)."""

    def __repr__(self) -> str:
        """`LLM('next-query')`."""


class _LLMs:
    """The type of `walle.llm`."""

    def load(self, name: str, context: int = 2048) -> LLM:
        """The bundle's language model `name` (`models/next-query.gguf` is `"next-query"`),
        with room for `context` tokens per conversation (at most the model's own).

        The file is memory-mapped once per device and shared by every task that loads it; its
        weights, and the cache as it grows, count in this task's memory budget. Raises
        `RuntimeError` when the bundle has no such model (the message lists the ones it has),
        the file is not a model the engine runs, or the weights and a full context's cache do
        not fit in what the budget has left (the message gives the sizes)."""

    def stats(self) -> LLMStats:
        """Bytes held by the task's loaded language models: weights and caches."""


llm: _LLMs
"""The bundle's language models: `walle.llm.load("next-query").chat("...")`."""


# ---------------------------------------------------------------------------------------------
# The run: context, uploads, logs.


def context() -> Context:
    """The run's trigger context, the same value the handler gets as its argument (a fresh
    copy on every call)."""


def upload(record: JsonLike) -> None:
    """Sends a JSON-like record to the cloud through the device's tunnel.

    Records are kept in the device's outbox and sent in order after the run succeeds; a failed
    run sends none. Uploaded records and the handler's returned ones share the task's
    `limits.max_output_bytes` (their JSON size); past it this raises `RuntimeError` and the run
    fails even if the exception is caught. Raises `TypeError` for a record that alone is larger
    than that limit, a value JSON cannot carry (naming its type), a NaN or infinite float, an
    int beyond 64 bits or a dict key that is not a str."""


def log(*parts: object, level: LogLevel = "info") -> None:
    """Appends a line to the run's log: the parts `str()`-ed and joined by spaces, prefixed
    with `[level]`.

    The log (this and `print`) is kept with the run's report and shown by `walle task test`;
    past `limits.max_log_bytes` (16 KiB by default) it is cut off with a marker and the script
    keeps running. Raises `ValueError` for an unknown level."""


# ---------------------------------------------------------------------------------------------
# Per-task state.


class _State:
    """The type of `walle.state`."""

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under `key`, or `default` when there is none.

        Values come back as JSON does: tuples as lists. Raises `RuntimeError` when the device's
        state store fails (the run then fails)."""

    def set(self, key: str, value: JsonLike) -> None:
        """Stores `value` (JSON-like, at most 1 MiB of JSON) under `key`; `None` deletes it.

        The write is seen by this run at once and saved only if the run succeeds, together with
        its records. Raises `TypeError` for a value JSON cannot carry or one over 1 MiB."""

    def delete(self, key: str) -> None:
        """Removes `key` (nothing happens when it is absent)."""

    def __getitem__(self, key: str) -> Any:
        """`walle.state[key]`: the stored value. Raises `KeyError` when there is none."""

    def __setitem__(self, key: str, value: JsonLike) -> None:
        """`walle.state[key] = value`: the same as `set`."""

    def __delitem__(self, key: str) -> None:
        """`del walle.state[key]`: the same as `delete` (no `KeyError` when absent)."""

    def __contains__(self, key: str) -> bool:
        """`key in walle.state`: whether a value is stored under `key`."""


state: _State
"""The task's persistent key-value store, kept per task name on the device (an upgrade keeps
it; another task cannot see it). Use it to remember things between runs: `walle.state[k] = v`,
`walle.state.get(k, 0)`."""
