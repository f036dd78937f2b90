"""One way to fail: every entry point runs its `main` through `run`.

The toolkit's own errors (`common.errors.ToolkitError`: a bad config value, bad data, a damaged artefact, a missing
model, a busy output folder, a diverged run) end in one line on stderr, `error: …`, naming the file, key or item and
what to do, and exit status 2. `--debug` (anywhere on the command line) or `MMDD_DEBUG=1` shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""
import os
import sys

from common.errors import ToolkitError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run(main, argv=None):
    """`main(argv)` with the toolkit's errors as one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MMDD_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("\ninterrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except ToolkitError as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
