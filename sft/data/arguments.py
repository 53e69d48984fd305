"""``DataArguments``: the data flags shared by training, evaluation and ``python -m sft.data check``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sft.data.formats import FORMATS
from sft.data.templates import TEMPLATES, get_template

logger = logging.getLogger(__name__)

# Column defaults follow the reference scripts: ADGEN's content/summary, ChatGLM2's prompt/response.
_DEFAULT_COLUMNS = {"adgen": ("content", "summary"), "chat": ("prompt", "response")}
TRAIN_ON = ("all", "last")


@dataclass
class DataArguments:
    """Where the data is, how its rows are laid out, and how they become token ids."""

    train_file: str | None = field(default=None, metadata={"help": "Training data: JSON Lines or a JSON array."})
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation data, same format as --train_file."}
    )
    format: str = field(
        default="adgen",
        metadata={"help": "Row schema of the files.", "choices": list(FORMATS)},
    )
    prompt_column: str | None = field(
        default=None,
        metadata={"help": "Prompt column for --format adgen/chat; unset means content (adgen) or prompt (chat)."},
    )
    response_column: str | None = field(
        default=None,
        metadata={"help": "Response column for --format adgen/chat; unset means summary (adgen) or response (chat)."},
    )
    history_column: str = field(
        default="history", metadata={"help": "History column ([[query, response], ...]) for --format chat."}
    )
    template: str = field(
        default="chatglm3",
        metadata={
            "help": "Prompt template (model family markup), saved with every checkpoint.",
            "choices": list(TEMPLATES),
        },
    )
    max_source_length: int = field(
        default=64,
        metadata={"help": "Most prompt tokens; longer prompts lose tokens from the left, keeping the answer cue."},
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Most answer tokens, eos included; longer answers are cut, eos kept."}
    )
    train_on: str = field(
        default="all",
        metadata={
            "help": "--format messages: loss on every assistant turn (all) or only the last.",
            "choices": list(TRAIN_ON),
        },
    )
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "Leave out rows that do not parse (counted in the log) instead of stopping."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation rows."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch's length up to a multiple of N (e.g. 8 for tensor cores)."}
    )

    def __post_init__(self) -> None:
        self._fill_default_columns()
        problems = self._problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _fill_default_columns(self) -> None:
        if self.format not in _DEFAULT_COLUMNS:
            for flag in ("prompt_column", "response_column"):
                if getattr(self, flag) is not None:
                    logger.warning("--%s is ignored with --format %s", flag, self.format)
            return
        prompt, response = _DEFAULT_COLUMNS[self.format]
        self.prompt_column = self.prompt_column or prompt
        self.response_column = self.response_column or response

    def _problems(self) -> list[str]:
        """Every invalid flag, each message naming its flag."""
        problems = []
        if self.format not in FORMATS:
            problems.append(f"--format: expected one of {', '.join(FORMATS)}, found {self.format!r}")
        if self.template != "auto":
            try:
                get_template(self.template)
            except ValueError as err:
                problems.append(str(err))
        if self.train_on not in TRAIN_ON:
            problems.append(f"--train_on: expected one of {', '.join(TRAIN_ON)}, found {self.train_on!r}")
        if self.format in _DEFAULT_COLUMNS and self.prompt_column == self.response_column:
            found = f"{self.prompt_column!r} for both"
            problems.append(f"--response_column: expected a column other than --prompt_column, found {found}")
        for flag in ("max_source_length", "max_target_length", "max_train_samples", "max_eval_samples",
                     "pad_to_multiple_of"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                problems.append(f"--{flag}: expected at least 1, found {value}")
        return problems
