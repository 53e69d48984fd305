"""What a fine-tuning method provides: :class:`Method`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Method:
    """How one method trains a base model, saves what it trained, and loads it back.

    Every method runs the base with the checkpoint's attention mask (causal or prefix-LM):
    :func:`ptuning.injection.attach_prefix` sits on the transformers model itself, so it also
    applies under peft's wrapper, whose ``forward`` and ``generate`` call the wrapped model.
    """

    name: ClassVar[str]
    default_learning_rate: ClassVar[float]
    arguments: ClassVar[type | None] = None  # its flags' dataclass, parsed by sft.train
    files: ClassVar[tuple[str, ...]] = ()  # what a checkpoint directory must hold ("a|b": either)
    own_model: ClassVar[bool] = False  # a checkpoint is a whole model, loaded from its own directory

    def settings(self, model: PreTrainedModel, args: Any, mask: str) -> dict | None:
        """The checkpoint's section for this method (``CheckpointInfo.<name>``), from its flags."""
        return None

    def prepare(self, model: PreTrainedModel, settings: dict | None, mask: str) -> nn.Module:
        """Make ``model`` train as this method says, from fresh weights; returns the model to train."""
        raise NotImplementedError

    def prepare_to_train(self, model: PreTrainedModel, settings: dict | None, mask: str, flags: Any,
                         train_rows: Sequence[dict]) -> nn.Module:
        """:meth:`prepare` for a training run, which may start from its flags and encoded training rows."""
        return self.prepare(model, settings, mask)

    def save(
        self,
        model: nn.Module,
        directory: Path,
        *,
        tokenizer: PreTrainedTokenizerBase | None,
        mask: str,
        template: str,
        state_dict: dict | None,
    ) -> None:
        """Write what trained into ``directory`` (``state_dict``: the Trainer's gathered one under ZeRO-3)."""
        raise NotImplementedError

    def load(self, model: PreTrainedModel, settings: dict | None, mask: str, directory: Path) -> nn.Module:
        """``model`` (the verified base, or for :attr:`own_model` the checkpoint's own) with the trained part."""
        raise NotImplementedError

    def load_weights(self, model: nn.Module, directory: Path) -> bool:
        """Load trained weights into a model prepared by :meth:`prepare` (resuming, best checkpoint).

        Returns ``False`` when transformers' Trainer loads this method's files itself.
        """
        return False
