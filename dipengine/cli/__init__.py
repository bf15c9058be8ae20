"""The ``dipengine`` command line (contract §1).

One module per command under :mod:`dipengine.cli`, each exposing ``command`` (a click command),
loaded lazily so that ``dipengine --help`` stays fast. Exit codes: 0 success, 1 data error
(one line naming file, column, value; no traceback), 2 usage error.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from dipengine.errors import DataError

# command name -> module under dipengine.cli
COMMANDS = {
    "demo": "demo",
    "synth": "synth",
    "validate": "validate",
    "catalog": "catalog",
    "rules": "rules",
    "group": "group",
    "settle": "settle",
    "benefits": "benefits",
    "estimate": "estimate",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        mod = COMMANDS.get(name)
        if mod is None:
            return None
        return importlib.import_module(f"dipengine.cli.{mod}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dipengine")
def cli():
    """dipengine: DIP (按病种分值付费) grouping, scoring and settlement."""


def main(argv=None) -> int:
    """Console entry point; turns :class:`DataError` into one line on stderr and exit 1."""
    try:
        rv = cli.main(args=argv, prog_name="dipengine", standalone_mode=False)
    except DataError as e:
        click.echo(f"error: {e.one_line()}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def single_threaded_blas(environ=None) -> None:
    """Ask OpenBLAS for one thread, unless the user chose or numpy is already loaded.

    No command spends time in BLAS (the catalogue's few matrix-vector products are
    memory-bound), but numpy's OpenBLAS starts a thread per core that spins for about 0.1 s
    of CPU after import; on a 2-core machine that is a core taken from the first batches.
    Our own threads are set by ``--threads`` / ``OMP_NUM_THREADS``, untouched here.
    """
    environ = os.environ if environ is None else environ
    if "numpy" not in sys.modules:
        environ.setdefault("OPENBLAS_NUM_THREADS", "1")


STREAMING_COMMANDS = ("group",)
"""Commands that stream a file batch by batch (see :func:`jemalloc_for_streaming`)."""


def jemalloc_for_streaming(argv=None, environ=None) -> None:
    """Make jemalloc Arrow's default pool for a streaming command, unless the user chose.

    ``dipengine group`` allocates from jemalloc while it runs (``cli._common.retaining_memory_pool``),
    but ``pyarrow.set_memory_pool`` does not reach the Parquet reader's own buffers (the pages it
    reads), which come from Arrow's C++ default: mimalloc, which asks for transparent huge pages,
    so every fresh 2 MiB is faulted and zeroed. With one allocator that keeps its pages the run
    faults less (measured: median 1.28 vs 1.35 s, 50 MiB less peak memory on 2M cases). The C++
    default is fixed when pyarrow is imported, hence an environment variable set before that, on
    Linux (where pyarrow's wheels carry jemalloc) and only for the streaming commands: a whole-file
    read is faster with mimalloc.
    """
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in STREAMING_COMMANDS and "pyarrow" not in sys.modules and sys.platform.startswith("linux"):
        environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


def exit_now(code: int) -> None:
    """End the process with ``code`` once stdout and stderr are flushed, without tearing the
    interpreter down.

    Every command has closed its files (outputs are renamed into place) and joined its threads
    before :func:`main` returns; what is left is freeing every object and module one by one,
    which after ``dipengine group`` on 2M cases took 60-70 ms of the command's wall time (30 ms
    without it, most of it the kernel releasing the memory). Under coverage or a debugger
    (a trace function set), the usual exit runs, so their exit hooks still do.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
    if "coverage" in sys.modules or sys.gettrace() is not None:
        sys.exit(code)
    os._exit(code)


def run() -> None:
    """The ``dipengine`` program (a process of its own): :func:`main` with the process set up."""
    single_threaded_blas()
    jemalloc_for_streaming()
    exit_now(main())
