"""One timed ``mix_models_with_data`` call, run in its own process by bench_lmcocktail.py.

    python loadtests/mix_driver.py {lmcocktail,cocktail} SPEC.json RESULT.json

SPEC holds the model folders, the examples, the arguments and the output folder
(``model_type``, ``neg_number`` and ``seed`` are optional: decoder, 7, 0).
``lmcocktail`` runs LM-Cocktail 0.0.4 (in the peers venv), ``cocktail`` runs ours.
RESULT gets the call's wall time, the weights, and the process's peak RSS before
and after the call. Imports happen before the clock starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time


def _rss_mib() -> float:
    from rss import peak_rss_mib  # loadtests/rss.py, next to this script

    return peak_rss_mib()


def run_lmcocktail(spec: dict) -> list[float]:
    import random

    from LM_Cocktail import mix_models_with_data

    # LM-Cocktail samples negatives with the global `random`; seeding it makes it draw
    # what Cocktail draws with random.Random(seed).
    random.seed(spec.get("seed", 0))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mix_models_with_data(
            spec["models"],
            spec.get("model_type", "decoder"),
            spec["examples"],
            temperature=spec["temperature"],
            batch_size=spec["batch_size"],
            max_input_length=spec["max_input_length"],
            neg_number=spec.get("neg_number", 7),
            output_path=spec["output"],
        )
    # LM-Cocktail prints "***weight for each model***: " then "PATH WEIGHT" per model.
    lines = buf.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "weight for each model" in line) + 1
    return [float(line.rsplit(" ", 1)[1]) for line in lines[start : start + len(spec["models"])]]


def run_cocktail(spec: dict) -> list[float]:
    from merger import mix_models_with_data

    weights: list[float] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            weights.append(float(record.args[0]))  # type: ignore[index]

    logger = logging.getLogger("merger.cocktail.mix")
    logger.setLevel(logging.INFO)
    logger.addHandler(Capture())
    mix_models_with_data(
        spec["models"],
        spec.get("model_type", "decoder"),
        spec["examples"],
        temperature=spec["temperature"],
        batch_size=spec["batch_size"],
        max_input_length=spec["max_input_length"],
        neg_number=spec.get("neg_number", 7),
        output_path=spec["output"],
        seed=spec.get("seed", 0),
    )
    return weights


def main() -> int:
    impl, spec_file, result_file = sys.argv[1:4]
    spec = json.loads(open(spec_file).read())  # noqa: SIM115
    # Both implementations get the same imports before the clock starts, including the
    # modules transformers would import lazily on the first Llama / tokenizer load (~1.5 s).
    import torch
    from transformers import (  # noqa: F401
        AutoModel,
        AutoModelForCausalLM,
        AutoTokenizer,
        BertModel,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.set_num_threads(spec["threads"])
    run = {"lmcocktail": run_lmcocktail, "cocktail": run_cocktail}[impl]
    if impl == "lmcocktail":
        import LM_Cocktail  # noqa: F401
    else:
        import merger.cocktail.mix  # noqa: F401
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    weights = run(spec)
    wall = time.perf_counter() - t0
    result = {"wall_s": wall, "weights": weights, "rss_before_mib": rss_before}
    result["rss_peak_mib"] = _rss_mib()
    with open(result_file, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
