"""Analysis: studies over runs, ``samples.jsonl`` records from any model, real-model measurements.

``study.py`` (grids of runs, their summaries, seed-paired comparisons), ``records.py`` (any
loaded model's groups as the trainer's sample records), ``real_model.py`` (accuracy, entropy and
credit of a real instruct model).
"""

from .real_model import (
    credit_shares,
    entropy_summary,
    high_entropy_words,
    study_accuracy,
    task_accuracy,
    wilson_interval,
)
from .records import rollout_records
from .study import (
    Study,
    accuracy_at_tokens,
    confidence_interval,
    describe,
    entropy_by_step,
    equal_budget,
    finished_runs,
    label_methods,
    load_results,
    load_study,
    paired_comparison,
    run_grid,
    save_manifest,
    setting_label,
    summarize,
    summarize_run,
)

__all__ = [
    "Study",
    "finished_runs",
    "load_study",
    "accuracy_at_tokens",
    "confidence_interval",
    "credit_shares",
    "describe",
    "entropy_by_step",
    "entropy_summary",
    "equal_budget",
    "high_entropy_words",
    "label_methods",
    "load_results",
    "paired_comparison",
    "rollout_records",
    "run_grid",
    "save_manifest",
    "setting_label",
    "study_accuracy",
    "summarize",
    "summarize_run",
    "task_accuracy",
    "wilson_interval",
]
