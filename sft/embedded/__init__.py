"""The embedded default base model shipped inside the package (see glm-zh-tiny/README.md)."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "glm-zh-tiny"
