"""Tools that build the project's shipped assets; run from the repository root, never installed.

* ``python -m tools.synthetic``: the sample data under ``data/``.
* ``python -m tools.build_tokenizer`` then ``python -m tools.pretrain`` (``scripts/build_embedded.sh``
  runs both): the embedded model ``sft/embedded/glm-zh-tiny/``.

They may import the library (``sft``, ``ptuning``); the library never imports them, and
``pyproject.toml`` packages only ``sft`` and ``ptuning``, so none of this ships in the wheel.
"""
