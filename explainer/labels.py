"""ImageNet-1k class names (bundled data file, index = class id)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in class-index order (``imagenet_labels()[285] == 'Egyptian cat'``)."""
    text = resources.files("explainer").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def label_of(index: int, num_classes: int = 1000) -> str:
    """The ImageNet name of ``index`` for 1000-class models, else ``"class {index}"``."""
    names = imagenet_labels()
    return names[index] if num_classes == len(names) and 0 <= index < len(names) else f"class {index}"
