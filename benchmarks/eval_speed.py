"""Time the evaluation harness on the full MAD-Eval set (6,520 ADs) with the lexical R@k/N backend.

Predictions are a deterministic perturbation of the ground truth: every other AD (odd ad_index) takes the text
of the next AD of its movie (the previous one for a movie's last AD), so scores are neither 0 nor 100 and
R@k/N has real misses.

    python benchmarks/eval_speed.py [--gt data/assets/madeval_anno.csv]
"""

from __future__ import annotations

import argparse
import logging
import time

from distinctad.common import init_logger
from distinctad.data import ASSETS
from distinctad.data.annotations import read_annotations
from distinctad.eval import evaluate

DEFAULT_GT = ASSETS / "madeval_anno.csv"  # shipped with the package


def perturbed_predictions(ads) -> list[dict]:
    """Every other AD shifted by one within its movie."""
    by_movie: dict[str, list] = {}
    for ad in ads:
        by_movie.setdefault(ad.movie, []).append(ad)
    preds = []
    for movie, items in by_movie.items():
        for i, ad in enumerate(items):
            src = ad if i % 2 == 0 else items[i + 1 if i + 1 < len(items) else i - 1]
            preds.append({"movie": movie, "ad_index": ad.ad_index, "text": src.sentence})
    return preds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Time distinctad.eval on MAD-Eval with the lexical backend.")
    p.add_argument("--gt", default=str(DEFAULT_GT), help="Ground-truth annotation CSV (default: the shipped MAD-Eval).")
    p.add_argument("--metrics", default="bleu,meteor,rouge,cider", help="Comma-separated caption metrics.")
    p.add_argument("--recall-k", type=int, nargs="+", default=[1, 5], help="k values for R@k/N.")
    args = p.parse_args(argv)
    init_logger(logging.WARNING)

    t0 = time.perf_counter()
    anns = read_annotations(args.gt)  # the default bad-UTF-8 policy, as distinctad-eval
    preds = perturbed_predictions(anns.ads)
    t_read = time.perf_counter() - t0
    result = evaluate(
        preds,
        anns.ads,
        metrics=tuple(args.metrics.split(",")),
        recall_k=args.recall_k,
        recall_n=16,
        backend="lexical",
        progress=False,
    )
    total = time.perf_counter() - t0
    timings = dict(result["meta"]["timings_s"])
    inner = timings.pop("total")

    print(
        f"MAD-Eval: {result['meta']['num_ads']} ADs, {result['meta']['num_movies']} movies, "
        f"{result['meta']['recall']['windows']} R@k/16 windows"
    )
    print("scores: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float)))
    print(f"total wall time: {total:.2f} s (read + perturb {t_read:.2f} s, evaluate() {inner:.2f} s)")
    for name, sec in timings.items():
        print(f"  {name:<17} {sec:7.2f} s  {100 * sec / total:5.1f} %")
    java = sum(timings.get(k, 0.0) for k in ("tokenize", "meteor", "meteor_per_group"))
    print(
        f"Java (PTB tokenizer + METEOR overall + METEOR per movie): {java:.2f} s = {100 * java / total:.1f} % "
        "of the total"
    )
    return result


if __name__ == "__main__":
    main()
