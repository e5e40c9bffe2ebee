"""One merge command, run in its own process by bench_offline.py, with its call timed.

    python loadtests/merge_driver.py {mergekit,cocktail} RESULT.json CONFIG OUT_DIR [CLI ARGS...]

Runs exactly what the command line runs — ``mergekit-yaml CONFIG OUT ARGS`` (its
click ``main``) or ``cocktail merge CONFIG OUT ARGS`` (``server.cli.main``) — in
this process. Before the clock starts it imports the modules that command imports
anyway: ``mergekit.scripts.run_yaml`` (torch, transformers, mergekit) or
``merger.config.run`` (safetensors, NumPy, the merge core; ``cocktail`` defers
them to the subcommand, and torch is loaded only when the merge runs on torch:
see merger/lazy.py). RESULT gets the import time, the call time (argument
parsing, planning, the merge, writing the output folder; lazy imports inside the
call, torch's included, count for the tool that makes them), whether torch was
loaded, torch's thread count after the call where it was, and the process's peak RSS
(VmHWM, see rss.py). The parent measures the wall time.
"""

from __future__ import annotations

import json
import sys
import time


def torch_loaded() -> bool:
    """merger.lazy.loaded, restated: the mergekit side runs without Cocktail on its path."""
    module = sys.modules.get("torch")
    return module is not None and type(module).__name__ != "_LazyModule"


def main() -> int:
    t_start = time.perf_counter()
    tool, result_file, *argv = sys.argv[1:]
    if tool == "mergekit":
        from mergekit.scripts.run_yaml import main as cli

        def call() -> None:
            cli.main(args=argv, standalone_mode=False)

    elif tool == "cocktail":
        import merger.config.run  # noqa: F401
        from server.cli import build_parser, dispatch, finish

        args = build_parser().parse_args(["merge", *argv])

        def call() -> None:
            rc = dispatch(args)
            if rc:
                raise SystemExit(rc)

    else:
        raise SystemExit(f"unknown tool {tool!r}; use mergekit or cocktail")
    t_imported = time.perf_counter()
    call()
    t_done = time.perf_counter()
    # torch's thread count where the tool loaded torch (cocktail's NumPy merges never
    # do; merger.lazy registers it without loading it)
    threads = sys.modules["torch"].get_num_threads() if torch_loaded() else None
    from rss import peak_rss_mib  # loadtests/rss.py, next to this script

    with open(result_file, "w") as f:
        json.dump(
            {
                "import_s": t_imported - t_start,
                "call_s": t_done - t_imported,
                "torch_default_threads": threads,
                "torch_loaded": torch_loaded(),
                "peak_rss_mib": peak_rss_mib(),
            },
            f,
        )
    if tool == "cocktail":
        finish(args, 0)  # exits as the `cocktail` console script does
    return 0


if __name__ == "__main__":
    sys.exit(main())
