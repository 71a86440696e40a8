"""Results tables: mean ± std over seeds, paired-bootstrap differences from A0, the Recall backend in headers."""

from __future__ import annotations

from distinctad.train.models.captioner_config import PRESETS
from distinctad.train.tools import ablate
from distinctad.train.tools.compare import column_label, compare, difference_table, mlflow_column

KEYS = [["m", 0], ["m", 1]]


def _report(cider, recall):
    return {"per_ad": {"keys": KEYS, "CIDEr": cider, "R@5/16": recall}, "meta": {"backend": "lexical (mean of ...)"}}


A0 = [_report([10.0, 20.0], [100.0, 0.0]), _report([10.0, 20.0], [100.0, 0.0])]
C3 = [_report([20.0, 30.0], [0.0, 100.0]), _report([20.0, 30.0], [0.0, 100.0])]


def test_differences_pair_ads_per_seed_and_pool_seeds():
    cider = compare(C3, A0, "CIDEr", resamples=300)
    assert (cider.diff, cider.low, cider.high, cider.n) == (10.0, 10.0, 10.0, 4) and cider.significant
    recall = compare(C3, A0, "R@5/16", resamples=300)  # -100, +100 under each seed: mean 0
    assert recall.diff == 0.0 and recall.low < 0 < recall.high and not recall.significant
    assert compare(C3, A0, "ROUGE-L") is None  # no per-AD scores of it


def test_tables_show_mean_std_significance_and_backend():
    md, raw = difference_table(["C3"], {"C3": C3}, A0, ["CIDEr", "R@5/16", "BLEU-1"], "lexical (x)", resamples=300)
    lines = md.splitlines()
    assert "2 seed(s) (4 pairs, 300 resamples)" in lines[0]
    assert lines[2] == "| A0 → row | Δ CIDEr [95% CI] | Δ R@5/16 (lexical) [95% CI] |"
    assert lines[4].startswith("| C3 − A0 | +10.00 [+10.00, +10.00] * | +0.00 [")
    assert not lines[4].endswith("* |")
    assert raw["C3"]["CIDEr"].significant
    results = {
        "A0": [{"eval/CIDEr": 10.0, "eval/R@5/16": 50.0}, {"eval/CIDEr": 14.0, "eval/R@5/16": 50.0}],
        "C3": [{"eval/CIDEr": 12.0}],
    }
    table = ablate.table(results, ["A0", "C3"], PRESETS, backend="bertscore (roberta-large ...)")
    head, _, a0, c3 = table.splitlines()
    assert "| R@5/16 (bertscore) |" in head
    # mean ± sample std of 10 and 14: 12 ± 2.83; R@5/16 50 ± 0; one seed: no ±
    assert "| 2 | 12.00 ± 2.83 | 50.00 ± 0.00 |" in a0 and "| 1 | 12.00 | – |" in c3
    assert column_label("CIDEr", "lexical") == "CIDEr" and mlflow_column("R@5/16", "lexical (x)") == "R@5/16 lexical"
    assert ablate.title(3, 40, "", True).startswith(
        "# Table D.2 ablation (3 seed(s), 40 steps each; SynthMAD, synthetic"
    )
