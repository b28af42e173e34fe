"""The project's error and warning types and how the command lines report them: one line on stderr and exit status
2, whatever raised them and wherever (DataLoader workers included); a warning as one 'warning: ...' line. Python
users catch ``UserError`` (or a subclass) and filter or record ``ProjectWarning`` with the ``warnings`` module."""

from __future__ import annotations

import contextlib
import signal
import sys
import warnings


class ProjectWarning(UserWarning):
    """Something the user should know that does not stop the work (a young EMA, a skipped image)."""


def warn(message: str) -> None:
    """Issue a ProjectWarning from library code (``warnings``; the command lines print it as one line)."""
    warnings.warn(message, ProjectWarning, stacklevel=3)


class UserError(Exception):
    """A problem the user can act on (bad input, a missing or damaged file): printed as one line, exit status 2."""


class CLIError(UserError):
    """A bad command line, or a file that does not fit what the command was asked to do."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, or does not fit the model it is loaded into."""


class WriteError(UserError, OSError):
    """A result could not be written (a full disk, a missing permission); nothing partial was left behind."""


class RunInUse(UserError):
    """Another process is training into the same run folder."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line. An error re-raised by a DataLoader worker carries the worker's whole
    traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ... DataError: message"): only
    the original message is kept."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = type(e).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(e).__name__


def run_cli(main, argv=None) -> int:
    """Call main(argv). User errors print 'error: ...' on stderr (one line) and return 2; ProjectWarnings print
    'warning: ...' (one line each, every time); Ctrl-C prints one line and returns 130 (the scripts clean up what they were writing before the interrupt reaches here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ProjectWarning)
            default = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, ProjectWarning):
                    print(f"warning: {message}", file=sys.stderr)
                else:
                    default(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            return main(argv) or 0
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130


@contextlib.contextmanager
def children_ignore_sigint():
    """Processes started inside this block (DataLoader workers, pools) ignore Ctrl-C from their first instruction
    (an ignored signal stays ignored in a child), so only the main process reacts to it and no worker prints a
    traceback; the main process stops them as it exits."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class GracefulStop:
    """Ctrl-C asks a loop to stop at its next safe point (``requested``) instead of interrupting it mid-step; a
    second Ctrl-C interrupts at once. Use as a context manager around the loop."""

    def __init__(self, message: str = "stopping after this step (Ctrl-C again to stop at once)"):
        self.requested, self.message, self._previous = False, message, None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self.message}", file=sys.stderr)

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)
        return False
