"""The LM-Cocktail evaluation through a real gateway, next to the same computation offline.

A ``cocktail serve`` process is started on the demo family (as ``make demo``
does), every variant is registered through Admin (DARE-compressed, seeded), and
each held-out example of each task is sent as Generate with the task's few
examples; the answers are scored by exact match. Offline, the same stored
deltas (read from the gateway's store as base + delta) are scored with the
gateway's loss, weighted with its rule (softmax(−loss/T), threshold,
renormalize, round to ``weight_decimals``), merged with ``merger.run_merge``
and evaluated with batched greedy decoding. When both sides arrive at the same
weights, the answers must be the same: the report counts the answers that
differ and the largest weight difference per task.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cache.keys import round_weights
from merger.demo.recipe import BASE
from merger.quality.config import EvalConfig
from merger.quality.evaluator import Evaluator, answer_budget, cocktail_weights
from merger.quality.results import Cell, Results, Row
from merger.quality.suite import DemoFamily

log = logging.getLogger(__name__)

TOKEN = "quality-eval-token"  # noqa: S105  (a throwaway token for a local, short-lived gateway)
WEIGHT_DECIMALS = 3  # the gateway's scoring.weight_decimals default


def write_settings(run: Path, family: DemoFamily, cfg: EvalConfig) -> Path:
    """A gateway config on free ports with the evaluation's LM-Cocktail settings."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "admin-token").write_text(TOKEN + "\n")
    config = run / "cocktail.yaml"
    lines = [
        f"base_model: {family.paths[BASE]}",
        f"delta_store: {run / 'store'}",
        f"allowed_source_roots: [{family.root / 'variants'}]",
        f"admin_token_file: {run / 'admin-token'}",
        "port: 0",
        "admin_port: 0",
        "metrics_port: -1",
        "threads: 1",
        "default_method: linear",
        "scoring:",
        f"  temperature: {cfg.temperature}",
        f"  weight_threshold: {cfg.threshold}",
        f"  weight_decimals: {WEIGHT_DECIMALS}",
        "",
    ]
    config.write_text("\n".join(lines))
    return config


def serve_and_ask(
    family: DemoFamily, cfg: EvalConfig, run: Path, drop_rate: float, say: Callable[[str], None]
) -> dict[str, Any]:
    """Start a gateway, register the variants, ask every held-out example; stop it."""
    from merger.cocktail.models import load_tokenizer
    from server.client import CocktailClient
    from server.demo import start_server

    tokenizer = load_tokenizer(family.paths[BASE])

    shutil.rmtree(run / "store", ignore_errors=True)
    proc, ports = start_server(write_settings(run, family, cfg), run)
    target, admin = f"127.0.0.1:{ports['port']}", f"127.0.0.1:{ports['admin_port']}"
    served: dict[str, Any] = {}
    try:
        with CocktailClient(target, admin_target=admin, token=TOKEN) as client:
            for name in family.tasks:
                client.register(name, family.paths[name], drop_rate=drop_rate)
            say(f"gateway {target}: {len(family.tasks)} variants registered at p={drop_rate:g}")
            for t in family.tasks:
                shots = [(e.input, e.output) for e in family.fewshot[t][: cfg.shots]]
                info = client.score(shots)
                budget = answer_budget(tokenizer, family.evals[t])
                answers, weights = [], set()
                for e in family.evals[t]:
                    r = client.generate(e.input, shots, max_tokens=budget, stop=["\n"])
                    answers.append(r.text.strip())
                    weights.add(tuple(sorted(r.merge.weights.items())))
                served[t] = {
                    "answers": answers,
                    "weights": dict(info.weights),
                    "losses": dict(info.losses),
                    "weight_sets": len(weights),
                }
                say(f"  {t}: {len(answers)} answers through the gateway")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    if code != 0:
        raise RuntimeError(f"the gateway exited with code {code}; see {run / 'server.log'}")
    return served


def offline_twin(
    family: DemoFamily, cfg: EvalConfig, store: Path, ev: Evaluator
) -> dict[str, dict[str, Any]]:
    """The gateway's computation offline, from the deltas it stored."""
    paths = {BASE: family.paths[BASE], **{t: store / t for t in family.tasks}}
    out: dict[str, dict[str, Any]] = {}
    for t in family.tasks:
        losses = ev.losses(family.fewshot[t][: cfg.shots], paths)
        weights = round_weights(
            cocktail_weights(losses, cfg.temperature, cfg.threshold), WEIGHT_DECIMALS
        )
        ev.load_linear(weights, paths)
        out[t] = {"cell": ev.exact_match(family.evals[t]), "weights": weights, "losses": losses}
    return out


def compare(
    family: DemoFamily, served: dict[str, Any], offline: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per task: both accuracies, answers that differ, largest weight and loss differences."""
    tasks: dict[str, Any] = {}
    for t in family.tasks:
        refs = [e.output for e in family.evals[t]]
        s_cell = Cell.score(served[t]["answers"], refs)
        o_cell: Cell = offline[t]["cell"]
        names = set(served[t]["weights"]) | set(offline[t]["weights"])
        tasks[t] = {
            "offline": _cell(o_cell),
            "served": _cell(s_cell),
            "answers_differ": sum(a != b for a, b in zip(s_cell.predictions, o_cell.predictions)),
            "max_weight_diff": max(
                abs(served[t]["weights"].get(n, 0.0) - offline[t]["weights"].get(n, 0.0))
                for n in names
            ),
            "max_loss_diff": max(
                abs(served[t]["losses"][n] - offline[t]["losses"][n]) for n in offline[t]["losses"]
            ),
            "served_weights": served[t]["weights"],
            "offline_weights": offline[t]["weights"],
            "weight_sets": served[t]["weight_sets"],
        }
    return {"tasks": tasks}


def _cell(c: Cell) -> dict[str, Any]:
    return {"correct": c.correct, "total": c.total, "predictions": list(c.predictions)}


def summary(gw: dict[str, Any]) -> str:
    tasks = gw["tasks"]
    same_w = all(v["max_weight_diff"] < 0.5 * 10**-WEIGHT_DECIMALS for v in tasks.values())
    differ = sum(v["answers_differ"] for v in tasks.values())
    total = sum(v["served"]["total"] for v in tasks.values())
    served = sum(v["served"]["correct"] for v in tasks.values())
    offline = sum(v["offline"]["correct"] for v in tasks.values())
    return (
        f"{total} Generate requests (5 examples + a held-out prompt each) to a `cocktail serve` "
        f"process holding the variants as DARE deltas (p = {gw['drop_rate']:g}, seeded), in "
        f"{gw['wall_seconds']:.0f} s. Served {served}/{total}, offline {offline}/{total}; "
        f"weights {'identical on every task' if same_w else 'differ on some task'} at "
        f"{WEIGHT_DECIMALS} decimals (largest loss difference "
        f"{max(v['max_loss_diff'] for v in tasks.values()):.2g} nats); {differ} answers differ."
    )


def gateway_eval(
    family: DemoFamily,
    cfg: EvalConfig,
    run: Path,
    *,
    drop_rate: float = 0.9,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Serve, ask, recompute offline, compare; the JSON-able result with its summary."""
    start = time.perf_counter()
    served = serve_and_ask(family, cfg, run, drop_rate, say)
    wall = time.perf_counter() - start
    with Evaluator(family.paths[BASE], seed=cfg.seed) as ev:
        offline = offline_twin(family, cfg, run / "store", ev)
    gw = compare(family, served, offline)
    gw.update({"drop_rate": drop_rate, "wall_seconds": round(wall, 1)})
    gw["summary"] = summary(gw)
    return gw


def add_rows(res: Results, gw: dict[str, Any]) -> None:
    """The served and offline-twin accuracies as rows of the report."""
    p = gw["drop_rate"]
    for key, side, label in (
        ("gateway", "served", f"LM-Cocktail through the gateway (deltas stored at p={p:g})"),
        ("cocktail_stored", "offline", f"LM-Cocktail offline, same stored deltas (p={p:g})"),
    ):
        row = Row(key, label, "gateway")
        for t, v in gw["tasks"].items():
            c = v[side]
            row.cells[t] = Cell(c["correct"], c["total"], tuple(c["predictions"]))
            row.weights[t] = v["served_weights" if side == "served" else "offline_weights"]
        res.rows[key] = row


def load_or_run(
    path: Path, family: DemoFamily, cfg: EvalConfig, run: Path, drop_rate: float, force: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """The cached comparison at ``path``, or a new one written there."""
    if not force and path.is_file():
        return json.loads(path.read_text()), True
    gw = gateway_eval(family, cfg, run, drop_rate=drop_rate, say=say)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gw, indent=1) + "\n")
    return gw, False
