"""`babysit watch [RUNS_ROOT | RUN ...]`: alert while runs train, on the terminal, a webhook or a command.

The engine is monitor/watcher.py (observe -> diagnose -> announce -> sinks), the alert destinations
monitor/sinks.py; this module only turns the command line into them and runs the loop until Ctrl-C (status 0)
or, with --once, evaluates what is present and exits like `babysit diagnose` (0 clean, 1 something reached
--fail-on, 2 bad input).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from babysit.errors import UsageError
from babysit.monitor.threshold_options import add_threshold_options, thresholds_from_args

__all__ = ["configure", "run"]

DRAIN_ON_EXIT_S = 2.0  # Ctrl-C: a dead webhook may delay the exit by at most this
DRAIN_ONCE_S = 15.0  # --once: the alerts are the point of the call, wait longer for them


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="RUNS_ROOT | RUN",
                        help="run directories, or folders holding them (default: runs)")
    parser.add_argument("--polling", action="store_true",
                        help="poll the filesystem instead of inotify (NFS, SMB and other network filesystems)")
    parser.add_argument("--poll-interval", type=_seconds, default=1.0, metavar="S",
                        help="seconds between polls with --polling or the automatic fallback (default 1)")
    parser.add_argument("--webhook", default=os.environ.get("BABYSIT_WEBHOOK"), metavar="URL",
                        help="POST alerts as JSON to this Slack-compatible incoming webhook "
                             "(default $BABYSIT_WEBHOOK; the URL is a secret and is never printed)")
    parser.add_argument("--webhook-timeout", type=_seconds, default=5.0, metavar="S",
                        help="seconds to wait for the webhook per try; 3 retries with backoff follow (default 5)")
    parser.add_argument("--exec", dest="exec_cmd", metavar="CMD",
                        help="run this shell command per alert, with the finding as JSON on stdin")
    parser.add_argument("--notify-min", choices=["info", "warning", "critical"], default="warning",
                        help="lowest severity sent to --webhook and --exec (default warning; the terminal shows all)")
    parser.add_argument("--stop-on", choices=["critical", "warning"],
                        help="ask a running run to stop (STOP file) when a finding reaches this severity")
    parser.add_argument("--once", action="store_true",
                        help="evaluate everything present and exit: 0 clean, 1 a finding reached --fail-on, "
                             "2 bad input")
    parser.add_argument("--fail-on", choices=["warning", "critical"], default="critical",
                        help="with --once, the severity that makes the exit status 1 (default critical)")
    add_threshold_options(parser)  # --threshold, --config: as for babysit diagnose
    parser.add_argument("--stall-after", type=_seconds, metavar="S",
                        help="seconds without new data or heartbeat before a running run is reported stalled "
                             "(default: from the run's own rhythm, at least 60)")
    parser.add_argument("--rate-limit", type=_count, default=5, metavar="N",
                        help="at most N alerts per rule per minute; the rest are summarized (default 5)")
    parser.add_argument("--backstop", type=_seconds, default=5.0, metavar="S",
                        help="seconds between full checks of every live run: liveness, stalls, missed events "
                             "(default 5)")
    parser.add_argument("--no-log", action="store_true",
                        help="do not append the watcher's findings to each run's findings.jsonl")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="colour the terminal lines (auto: only on a terminal)")


def _sinks(args: argparse.Namespace) -> list:
    from babysit.monitor.sinks import ExecSink, TerminalSink, WebhookSink

    color = {"auto": None, "always": True, "never": False}[args.color]
    sinks: list = [TerminalSink(sys.stdout, color=color)]
    try:
        if args.webhook:
            hook = WebhookSink(args.webhook, timeout=args.webhook_timeout)
            hook.min_severity = args.notify_min
            sinks.append(hook)
        if args.exec_cmd is not None:
            ex = ExecSink(args.exec_cmd)
            ex.min_severity = args.notify_min
            sinks.append(ex)
    except ValueError as e:
        for s in sinks:
            s.close(time.monotonic())
        raise UsageError(str(e)) from None
    return sinks


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """warnings.showwarning for the command line: a rule that broke is one line, not a source excerpt."""
    from babysit.monitor.sinks import warn_line

    warn_line(f"warning: {message}")


def run(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from babysit.monitor.sinks import severity_rank
    from babysit.monitor.watcher import Watcher, WatchError

    thresholds = thresholds_from_args(args) or None
    paths = args.paths or ["runs"]
    try:
        watcher_kwargs = dict(
            log=not args.no_log, thresholds=thresholds, stop_on=args.stop_on, stall_after=args.stall_after,
            rate_limit=args.rate_limit, polling=args.polling, poll_interval=args.poll_interval,
            backstop=args.backstop, announce_ended=args.once,
        )
        watcher = Watcher(paths, sinks=[], **watcher_kwargs)
    except WatchError as e:
        raise UsageError(str(e)) from None
    watcher.sinks = _sinks(args)

    if args.once:
        try:
            worst = watcher.evaluate_once()
        except WatchError as e:
            raise UsageError(str(e)) from None
        finally:
            watcher.close(time.monotonic() + DRAIN_ONCE_S)
        explicit_bad = [p for p in map(str, watcher.explicit) if p in watcher.bad]
        if explicit_bad:
            raise UsageError(watcher.bad[explicit_bad[0]])
        if not watcher.runs:
            raise UsageError(f"no readable runs in {', '.join(paths)}")
        n = sum(len(r.current) for r in watcher.runs.values())
        corrupt = watcher.corrupt_lines
        skipped = f", {corrupt} corrupt log lines skipped" if corrupt > 0 else ""
        print(f"babysit watch: {len(watcher.runs)} run(s), {n} finding(s){skipped}", file=sys.stderr)
        return 1 if worst >= severity_rank(args.fail_on) else 0

    stop = threading.Event()

    def _on_signal(signum, frame):  # Ctrl-C and SIGTERM: leave the loop, clean up, exit 0
        stop.set()
        watcher.wake()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        try:
            watcher.start()
        except WatchError as e:
            raise UsageError(str(e)) from None
        live = sum(r.running for r in watcher.runs.values())
        print(f"babysit watch: {len(watcher.runs)} run(s) ({live} running) in {', '.join(paths)}; "
              f"{watcher.mode}; Ctrl-C to stop", file=sys.stderr, flush=True)
        watcher.run_forever(stop)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close(time.monotonic() + DRAIN_ON_EXIT_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
