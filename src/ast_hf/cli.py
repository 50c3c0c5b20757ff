"""The `ast-hf` command line: every subcommand is defined here and calls one library function.

Each `_add_<name>` function declares one subcommand's arguments and sets `func`, which receives the parsed
arguments and returns the process exit code. Heavy imports happen inside `func`, so `ast-hf --help` is fast.
"""

from __future__ import annotations

import argparse
import sys


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print versions and the attention backends available")

    def run(args) -> int:
        import torch
        import transformers

        from . import __version__

        print(f"ast-hf {__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
              f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
        return 0

    p.set_defaults(func=run)


# Subcommands, in the order `ast-hf --help` lists them. Add one `_add_<name>` per subcommand above and list it.
_SUBCOMMANDS = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ast-hf", description="Audio Spectrogram Transformer tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ast-hf: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, OSError) as error:
        print(f"ast-hf {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
