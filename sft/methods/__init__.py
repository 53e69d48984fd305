"""Fine-tuning methods, one module each, and the registry every other module looks them up in.

A method (:class:`sft.methods.base.Method`) says what trains on a base model, how that part is
saved into a checkpoint directory and how it is loaded back, for training and inference alike.
A new method is one module here and one line in :data:`METHODS`.
"""

from __future__ import annotations

from sft.errors import UserError
from sft.methods.base import Method
from sft.methods.full import Full
from sft.methods.lora import Lora
from sft.methods.ptuning import PTuning

METHODS: dict[str, Method] = {method.name: method for method in (PTuning(), Lora(), Full())}


def get_method(name: str, flag: str = "--finetuning_type") -> Method:
    """The registered method called ``name``; a :class:`UserError` naming ``flag`` otherwise."""
    if name not in METHODS:
        raise UserError(f"{flag}: expected one of {', '.join(METHODS)}, found {name!r}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method"]
