"""Evaluation and inference: what to generate with (:mod:`~sft.eval.arguments`, :mod:`~sft.eval.loading`),
batched generation (:mod:`~sft.eval.generation`), ChatGLM's scores (:mod:`~sft.eval.scores`), the
resumable predictions file (:mod:`~sft.eval.predictions`), the evaluation job
(:mod:`~sft.eval.evaluation`) and answering prompts (:mod:`~sft.eval.inference`)."""
