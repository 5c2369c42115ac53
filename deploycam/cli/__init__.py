"""The ``deploycam`` command line: ``explain``, ``explain-dataset``, ``export``, ``layers``, ``models``, ``methods``, ``demo``,
``evaluate``, ``bench``.

Exit codes: 0 success; 1 some inputs could not be read (reported and skipped, the others done);
2 bad arguments or input (a one-line message, checked before the work wherever it can be, and then
nothing is written). The sub-command modules import torch only inside their ``run`` functions, so
``deploycam --help`` starts in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deploycam.cli import bench_cmd, dataset_cmd, demo_cmd, evaluate_cmd, explain_cmd, export_cmd, layers_cmd
from explainer.errors import DeployCamError

_COMMANDS = (demo_cmd, explain_cmd, dataset_cmd, export_cmd, layers_cmd, evaluate_cmd, bench_cmd)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one sub-command per module in ``_COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="deploycam",
        description="Hook-free Grad-CAM-family explanations for PyTorch CNNs.",
        epilog="exit codes: 0 ok, 1 some inputs unreadable (skipped), 2 bad arguments or input",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 some inputs failed, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (DeployCamError, FileNotFoundError) as exc:
        print(f"deploycam {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
