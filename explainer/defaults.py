"""Defaults shared by the library and the command line, importable without torch."""

#: The model the CLI and :func:`explainer.models.load_model` use when none is named (real ImageNet weights).
DEFAULT_MODEL = "efficientnet-lite0"
