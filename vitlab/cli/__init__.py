"""The ``vitlab`` command. Each subcommand is a plain function of keyword arguments, with its argparse
options declared beside it in the module of its group:

    models.py    vitlab models | info | complexity     what a model is and what it costs
    convert.py   vitlab convert | export               write a model in another format
    predict.py   vitlab predict | attention            run a model on image files
    train.py     vitlab train | demo | eval | fewshot  train a model and measure it
    analyze.py   vitlab analyze                        the analysis report
    explore.py   vitlab explore                        the attention explorer in the browser

``main`` parses the command line, calls the subcommand with the parsed options as keyword arguments, and
turns a user error (a :class:`vitlab.errors.VitlabError`: a bad checkpoint, an unknown model name, a missing
file; or an operating-system error on a file the user named: permission denied, a full disk) into one line on
stderr, ``vitlab: error: <message>``, and exit status 2. Any other exception is a bug in vitlab: one line saying
so, then the traceback, and exit status 3. Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

import vitlab
from vitlab.cli import analyze, convert, explore, models, predict, train
from vitlab.cli.common import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    error,
    one_line,
    os_error_message,
    warn,
)
from vitlab.errors import VitlabError

SUBCOMMANDS = (models.add_models, models.add_info, models.add_complexity, convert.add_convert, convert.add_export,
               predict.add_predict, predict.add_attention, train.add_train, train.add_eval, train.add_fewshot,
               train.add_probe, analyze.add_analyze, explore.add_explore, train.add_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vitlab", description="Build, load, convert and run Vision Transformers.",
        epilog="Exit status: 0 success; 1 some inputs (images of predict, attention) failed and the others ran; "
               "2 a usage, file, data or checkpoint error (one 'vitlab: error:' line); 3 an internal error (a bug: "
               "please report it with the traceback printed); 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {vitlab.__version__}",
                        help="print vitlab's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="`vitlab COMMAND --help` describes each")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, never a crash
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change (closed, or already written in binary)
                pass
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse already printed
        return EXIT_OK if e.code is None else e.code if isinstance(e.code, int) else EXIT_USAGE
    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    try:
        with warnings.catch_warnings():  # a Python warning raised while the command runs is one line on stderr
            warnings.simplefilter("default")
            # PIL's notes on a damaged file's metadata ("Tag data larger than file"): the file decodes, or its own
            # error says what is wrong; the decompression-bomb warning is a RuntimeWarning and still shows
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            warnings.showwarning = show_warning
            return args.func(**options)
    except BrokenPipeError:  # `vitlab models | head`: the reader left; stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):
            pass
        return EXIT_FAILED
    except VitlabError as e:
        error(one_line(str(e)))
        return EXIT_USAGE
    except OSError as e:
        message = os_error_message(e)
        if message is None:  # not about a file: not the user's input
            return internal_error(e)
        error(message)
        return EXIT_USAGE
    except MemoryError:
        error("out of memory: try a smaller --batch-size or image size, or a machine with more memory")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nvitlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - every other exception is a bug, reported as one
        return internal_error(e)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                 line: str | None = None) -> None:
    """warnings.showwarning for the command line: ``vitlab: warning: <message>``, without the source line."""
    warn(str(message))


def internal_error(e: BaseException) -> int:
    """A bug in vitlab: one line that says so, then the traceback to report."""
    print(f"vitlab: internal error: {type(e).__name__}: {one_line(str(e))}. This is a bug in vitlab; please report "
          f"it with the command and the traceback below.", file=sys.stderr)
    traceback.print_exception(e, file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
