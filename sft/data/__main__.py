"""``python -m sft.data check --train_file F --format ... [--tokenizer DIR]``."""

from sft.data.check import main

if __name__ == "__main__":
    main()
