"""Convert THUDM ChatGLM2/ChatGLM3/GLM-4 checkpoints into transformers-native model directories.

* :mod:`sft.conversion.thudm`: which checkpoints are taken (one-line refusals otherwise), the model
  family (:func:`~sft.conversion.thudm.detect_family`), the ``GlmConfig`` and stop tokens they get;
* :mod:`sft.conversion.weights`: the key mapping and the ``query_key_value`` split, shard by shard;
* :mod:`sft.conversion.tokenizer`: the tokenizer, as a fast tokenizer with no remote code.

``python -m sft.convert`` (:mod:`sft.convert`) runs them in that order.
"""
