"""The ``dipengine`` command line (contract §1).

One module per command under :mod:`dipengine.cli`, each exposing ``command`` (a click command),
loaded lazily so that ``dipengine --help`` stays fast; the click application is
:mod:`dipengine.cli._app` (``cli``, ``main`` and ``COMMANDS`` are importable from here too).
Exit codes: 0 success, 1 data error (one line naming file, column, value; no traceback),
2 usage error.
"""
from __future__ import annotations

import os
import sys

_APP_NAMES = ("cli", "main", "COMMANDS")


def __getattr__(name):
    if name in _APP_NAMES:
        from dipengine.cli import _app

        return getattr(_app, name)
    raise AttributeError(f"module 'dipengine.cli' has no attribute {name!r}")


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


def _command_of(argv) -> str | None:
    """The command a ``dipengine`` command line names (the group itself takes no option values)."""
    return next((a for a in argv if not a.startswith("-")), None)


STREAMING_COMMANDS = ("group",)
"""Commands that stream a file batch by batch (see :func:`allocators_for_streaming`)."""


def allocators_for_streaming(argv=None, environ=None) -> None:
    """Set up the allocators for a streaming command (``STREAMING_COMMANDS``) on Linux, unless
    the user chose: jemalloc as Arrow's default pool and one glibc malloc arena.

    ``dipengine group`` allocates from jemalloc while it runs (``cli._common.retaining_memory_pool``),
    but ``pyarrow.set_memory_pool`` does not reach the Parquet reader's own buffers (the pages it
    reads), which come from Arrow's C++ default: mimalloc, which asks for transparent huge pages,
    so every fresh 2 MiB is faulted and zeroed. With one allocator that keeps its pages the run
    faults less (measured: median 1.28 vs 1.35 s, 50 MiB less peak memory on 2M cases). The C++
    default is fixed when pyarrow is imported, hence ``ARROW_DEFAULT_MEMORY_POOL`` set before that
    (pyarrow's Linux wheels carry jemalloc). Only for the streaming commands: a whole-file read is
    faster with mimalloc. For numpy's arrays, see :func:`one_malloc_arena` (skipped when
    ``MALLOC_ARENA_MAX`` is set, or when ``environ`` is not the process's environment).
    """
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    if _command_of(argv) not in STREAMING_COMMANDS or not sys.platform.startswith("linux"):
        return
    if "pyarrow" not in sys.modules:
        environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    if environ is os.environ and "MALLOC_ARENA_MAX" not in environ:
        one_malloc_arena()


def one_malloc_arena() -> bool:
    """Ask glibc's malloc for a single arena (``mallopt(M_ARENA_MAX, 1)``); True if it took.

    A streaming command's worker threads allocate each batch's numpy arrays and the writer thread
    frees them; with an arena per thread, freed pages went back to the kernel and the next batch
    faulted in fresh, zeroed ones. With one arena they are reused: on 2M cases, system time
    0.44 -> 0.38 s and median wall 1.25 -> 1.21 s over 12 interleaved runs (the arena's lock is
    taken a few hundred times per batch, not per value). Must run before the worker threads start;
    does nothing off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-8, 1))  # M_ARENA_MAX (malloc.h)
    except (OSError, AttributeError):  # not glibc
        return False


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


def read_ahead(argv=None) -> bool:
    """For ``dipengine group --input F.parquet``: start decoding ``F`` now, before click and the
    commands are imported (about 25 ms of one core, while the other one is idle at start-up);
    the command's ``parquet_source.prefetch(F)`` takes the started read over. True if started.

    A command line this does not recognise starts nothing: the command then reads as usual.
    """
    argv = sys.argv[1:] if argv is None else argv
    if _command_of(argv) != "group":
        return False
    path = None
    for k, a in enumerate(argv):
        if a == "--input" and k + 1 < len(argv):
            path = argv[k + 1]
        elif a.startswith("--input="):
            path = a[len("--input="):]
    if not path or not path.lower().endswith((".parquet", ".pq")) or not os.path.isfile(path):
        return False
    from dipengine.parquet_source import read_ahead as start

    return start(path)


def run() -> None:
    """The ``dipengine`` program (a process of its own): :func:`main` with the process set up."""
    single_threaded_blas()
    allocators_for_streaming()
    read_ahead()
    from dipengine.cli._app import main

    exit_now(main())
