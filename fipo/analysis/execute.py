"""Execute one notebook with papermill, its kernel reached over Unix sockets instead of TCP ports.

Why not ``python -m papermill``: jupyter_client chooses a kernel's five TCP ports by binding port 0 and letting
go, and the kernel binds them a moment later. While Ray's workers, another notebook's kernel or any client open
sockets on the same machine, one of those ports is now and then taken in between: the kernel dies with
``ZMQError: Address already in use`` and papermill waits 60 s for "Kernel didn't respond" (seen in CI, with a
training and two notebooks running at once). The ``ipc`` transport names each socket by a file path in a folder
of this process's own: nothing to race for. The connection file lives in a short temporary folder because a
Unix socket's path is limited to 107 bytes, which a deep home directory would exceed.

    python -m fipo.analysis.execute NOTEBOOK OUTPUT [-r NAME VALUE]... [--cwd DIR]

``-r`` passes a raw string parameter, as papermill's own ``-r`` does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

KERNEL = "python3"
# papermill's default is 60 s; a kernel on 2 busy cores (a verl run beside it) has taken longer to import
START_TIMEOUT_S = 300


def execute(notebook: str | Path, output: str | Path, parameters: dict | None = None, cwd: str | Path | None = None,
            log_output: bool = False):
    """Run every cell of ``notebook`` with ``parameters`` injected; write the executed copy to ``output``."""
    import papermill
    from traitlets.config import Config

    sockets = tempfile.mkdtemp(prefix="fipo-nb-")
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.connection_file = str(Path(sockets) / "kernel.json")
    try:
        return papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters or {}, cwd=None if cwd is None else str(cwd),
            kernel_name=KERNEL, log_output=log_output, progress_bar=False, config=config,
            start_timeout=START_TIMEOUT_S,
        )
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fipo.analysis.execute", description=__doc__.split("\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("-r", "--raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a string parameter (papermill's -r)")
    parser.add_argument("--cwd", default=None, help="the kernel's working directory (default: this one)")
    args = parser.parse_args(argv)
    execute(args.notebook, args.output, dict(args.raw), cwd=args.cwd, log_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
