"""`--threshold NAME=VALUE` and `--config FILE`: one way to override the rules' thresholds, for every command
that runs the rules (diagnose, report, watch)."""

from __future__ import annotations

import argparse

from babysit.errors import UsageError

__all__ = ["add_threshold_options", "thresholds_from_args"]


def add_threshold_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                        help="override a rule threshold (repeatable); names in docs/rules.md")
    parser.add_argument("--config", metavar="FILE", help="thresholds from a .json or .toml file")


def thresholds_from_args(args: argparse.Namespace) -> dict[str, float]:
    """--config first, then each --threshold on top. Every name and value is checked by the rules (a typo
    never leaves a default silently in place); any mistake is a one-line UsageError."""
    if not getattr(args, "config", None) and not getattr(args, "threshold", None):
        return {}
    # only when asked: the rules package takes half a second to import, and `babysit watch` starts fast
    from babysit.rules.thresholds import load_config, parse_assignment

    out: dict[str, float] = {}
    try:
        if getattr(args, "config", None):
            out.update(load_config(args.config))
        for text in getattr(args, "threshold", None) or []:
            name, value = parse_assignment(text)
            out[name] = value
    except ValueError as e:
        raise UsageError(str(e)) from None
    return out
