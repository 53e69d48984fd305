"""``python -m sft.data check --train_file F --format ... [--tokenizer DIR]``."""

import sys

from sft.data.check import main

if __name__ == "__main__":
    sys.exit(main())
