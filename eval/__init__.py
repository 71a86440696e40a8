"""Independent evaluation harness. It never imports distinctad.train.

Library API (what the training job calls)::

    from distinctad.eval import evaluate, write_report
    result = evaluate(predictions, references, recall_k=5, recall_n=16, backend="lexical")
    write_report(result, "runs/x/report")  # runs/x/report.json + runs/x/report.md
"""

from distinctad.eval.errors import EvalEnvironmentError, EvalInputError
from distinctad.eval.harness import evaluate, log_to_mlflow, to_markdown, write_report
from distinctad.eval.normalize import Normalizer

__all__ = [
    "EvalEnvironmentError",
    "EvalInputError",
    "Normalizer",
    "evaluate",
    "log_to_mlflow",
    "to_markdown",
    "write_report",
]
