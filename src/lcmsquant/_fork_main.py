"""Imported first by the workers' fork server: runs the main script there, once.

multiprocessing means to do this itself when "__main__" is preloaded, but before CPython 3.13.8
it never passed the script's path to the server (python/cpython#126631), so every worker re-ran
the main script as it started: 0.2 s per worker for the `lcmsquant` command, 1 s for a script
that imports lcmsquant.runs. workers.start_server puts the script's path and command-line
arguments in MAIN_SCRIPT_VARIABLE (JSON), since the script may read its arguments at import.
"""

import json
import os
import sys
from multiprocessing import process, spawn

MAIN_SCRIPT_VARIABLE = "LCMSQUANT_FORK_SERVER_MAIN"


def _import_main_script() -> None:
    named = os.environ.pop(MAIN_SCRIPT_VARIABLE, None)
    if not named:
        return  # no script: python -c, a notebook
    path, argv = json.loads(named)
    if getattr(sys.modules.get("__main__"), "__file__", None) == path:
        return  # multiprocessing has done it already
    sys.argv[:] = argv
    process.current_process()._inheriting = True  # as multiprocessing does: no pools at import
    try:
        spawn.import_main_path(path)
    except Exception:  # noqa: BLE001  each worker then runs it itself and reports what fails
        pass
    finally:
        del process.current_process()._inheriting


_import_main_script()
