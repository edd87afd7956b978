"""`babysit`: one command, many subcommands. Each subcommand lives in its own module, imported only when used,
so `babysit diagnose` never pays for importing torch or streamlit.

A subcommand module defines `configure(parser: argparse.ArgumentParser) -> None` and
`run(args: argparse.Namespace) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from babysit.errors import UsageError  # re-exported: subcommands raise it

__all__ = ["main", "COMMANDS", "UsageError"]

# name -> (module, one-line help). The order is the order of `babysit --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("babysit.monitor.demo", "start a healthy and a broken run on digits and the dashboard over them"),
    "train": ("babysit.trainer.cli", "train the reference model with the hooks inside"),
    "diagnose": ("babysit.monitor.diagnose", "say what is wrong with a run, with evidence and fixes"),
    "dashboard": ("babysit.monitor.dashboard_cli", "live dashboard over a folder of runs (Streamlit)"),
    "watch": ("babysit.monitor.watch", "alert while runs train: terminal, webhook, command; can stop runs"),
    "report": ("babysit.monitor.report", "one standalone HTML report of a run"),
    "sanity": ("babysit.trainer.sanity", "sanity checks before a real run: ln(C) loss, reg raises loss, overfit 20"),
    "search": ("babysit.trainer.search", "coarse-to-fine random search of learning rate and regularization"),
    "lr-find": ("babysit.trainer.lr_find_cli", "learning-rate range test: sweep the lr, suggest one and say why"),
    "evaluate": ("babysit.trainer.evaluate", "evaluate a run's checkpoint; --test touches the test split once"),
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument gets one line (with where to look), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="babysit",
        description="A training babysitter for PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<10} {h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"babysit: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        print(f"babysit {name}: not available in this installation ({e})", file=sys.stderr)
        return 2
    parser = _OneLineParser(prog=f"babysit {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except UsageError as e:
        print(f"babysit {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"babysit {name}: interrupted", file=sys.stderr)
        return 130
    except (Exception, RecursionError, MemoryError) as e:  # noqa: BLE001 - a bug or input we did not foresee
        # Hostile input must never reach the user as a traceback (it leaks paths and says nothing useful):
        # one line, exit 2, and the traceback only when asked for.
        if os.environ.get("BABYSIT_DEBUG"):
            raise
        why = " ".join(str(e).split())[:300]
        print(f"babysit {name}: error: {type(e).__name__}{': ' + why if why else ''} "
              "(unexpected; BABYSIT_DEBUG=1 shows where)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m monitor.cli` runs this file as __main__, a second copy of the module: use the real one so
    # its UsageError is the one subcommands raise.
    from babysit.monitor.cli import main as _main

    sys.exit(_main())
