"""Figures and widgets of the workbench (plotly): every figure function returns a
``plotly.graph_objects.Figure`` (token-level text: a :class:`TokenHighlight` that renders as HTML)
and reads run directories, samples or DataFrames, never the trainer.

- :mod:`.highlight`: a group's responses as text, tokens coloured by entropy, advantage or log-prob;
- :mod:`.redistribution`: per-token advantages of one group under each algorithm;
- :mod:`.method_credit`: one group under every entropy method: credited, penalised, dropped, frozen tokens;
- :mod:`.curves`: training curves, seeds aggregated into bands;
- :mod:`.stability`: the chain task at growing lengths;
- :mod:`.analysis`: entropy distributions, by position, forking tokens, entropy shift;
- :mod:`.widgets`: the shaping explorer, the method explorer and the run launcher;
- :mod:`.sources`: the inputs (runs, groups, the per-token table); :mod:`.style`: colours, names, the template.
"""

from .analysis import (
    entropy_by_position,
    entropy_distribution,
    entropy_shift_figure,
    forking_tokens,
    forking_tokens_table,
    split_first_last,
)
from .curves import aggregate_runs, training_curves
from .highlight import TokenHighlight, token_highlight
from .method_credit import method_credit, method_credit_table
from .redistribution import algorithm_advantages, redistribution_figure, redistribution_from_sample, synthetic_group
from .sources import Group, RunData, as_group, as_runs, one_group, pick_record, run_samples, token_table
from .stability import stability_figure, stability_table
from .style import PALETTE, algorithm_color, display_name
from .widgets import MethodExplorer, RunLauncher, ShapingExplorer, method_explorer, run_launcher, shaping_explorer

__all__ = [
    "PALETTE",
    "Group",
    "RunData",
    "RunLauncher",
    "ShapingExplorer",
    "aggregate_runs",
    "algorithm_advantages",
    "algorithm_color",
    "display_name",
    "as_group",
    "as_runs",
    "entropy_by_position",
    "entropy_distribution",
    "entropy_shift_figure",
    "forking_tokens",
    "forking_tokens_table",
    "MethodExplorer",
    "method_credit",
    "method_explorer",
    "method_credit_table",
    "one_group",
    "redistribution_figure",
    "redistribution_from_sample",
    "run_launcher",
    "shaping_explorer",
    "split_first_last",
    "stability_figure",
    "stability_table",
    "synthetic_group",
    "token_table",
    "token_highlight",
    "TokenHighlight",
    "pick_record",
    "run_samples",
    "training_curves",
]
