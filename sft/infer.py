"""Generate ad text from a checkpoint or a base model: ``python -m sft.infer [flags]``.

Which model (see :class:`sft.generation.LoadArguments`):

* ``--checkpoint DIR``: a fine-tuning checkpoint; its ``sft_checkpoint.json`` names the base
  model, the method, the mask and the template, so nothing else is needed.
* ``--model_name_or_path DIR``: a plain model (or ``embedded``), with its own defaults.
* neither: ``output/adgen-ptuning`` (what ``bash scripts/train.sh`` writes) if it exists,
  else the embedded base model. The log says which one was loaded.

What to generate for:

* ``--prompt "类型#上衣*颜色#红色"``: prints one answer.
* ``--input_file F --output_file G``: F is JSON Lines (or a JSON array) with the prompt
  column (default: the checkpoint's, ``content`` for ADGEN); G gets each row with
  ``prediction`` added, in input order.
* nothing: an interactive loop; type a prompt after ``> ``, the answer streams token by
  token; ``exit`` or end of input (Ctrl-D) quits.

Prompts are rendered with the checkpoint's template and cut to its ``max_source_length``
exactly as in training. Generation flags are :class:`sft.generation.GenerationArguments`.
"""

from __future__ import annotations

import sys

from sft.cli import run_command
from sft.eval.arguments import GenerationArguments, InferArguments, LoadArguments


def parse_args(argv: list[str] | None = None) -> tuple[LoadArguments, InferArguments, GenerationArguments]:
    from transformers import HfArgumentParser

    return HfArgumentParser((LoadArguments, InferArguments, GenerationArguments)).parse_args_into_dataclasses(args=argv)


def run(args: tuple[LoadArguments, InferArguments, GenerationArguments]) -> None:
    from sft.eval.inference import infer

    infer(*args)


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda: parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
