"""Full fine-tuning: every weight trains; a checkpoint is a standalone transformers model directory."""

from __future__ import annotations

from pathlib import Path

from sft.methods.base import Method
from sft.models import save_model_dir


class Full(Method):
    name = "full"
    default_learning_rate = 1e-4  # ChatGLM-6B ds_train_finetune.sh
    files = ("config.json", "model.safetensors|model.safetensors.index.json")  # big models shard
    own_model = True

    def prepare(self, model, settings, mask):
        model.requires_grad_(True)
        from ptuning.injection import attach_prefix

        attach_prefix(model, None, mask)
        return model

    def save(self, model, directory: Path, *, tokenizer, mask, template, state_dict):
        if tokenizer is None:
            raise ValueError("a full fine-tuning checkpoint includes the tokenizer")
        save_model_dir(model, tokenizer, mask, template, directory, state_dict)

    def load(self, model, settings, mask, directory):
        return self.prepare(model, settings, mask)
