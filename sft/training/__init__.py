"""Training: flags (:mod:`~sft.training.arguments`), the Trainer (:mod:`~sft.training.trainer`), the
report (:mod:`~sft.training.report`) and the recipe that runs them (:mod:`~sft.training.recipe`)."""
