"""One batch, every method: which tokens each entropy method credits, penalises, drops or freezes.

GRPO and DAPO weigh every token of a response alike; GTPO, GRPO-S, the entropy advantage and the
surprisal variants reshape the advantages; the forking-token mask and Clip-Cov drop tokens from
the loss; KL-Cov and ERC hold tokens at the behaviour policy. :func:`method_credit_table` gives,
for one logged group, each method's advantage and gradient weight of every token with its status,
all computed by the library (:meth:`workbench.algorithms.Algorithm.token_credit`: the advantage
functions, the selection functions of :mod:`workbench.losses` and autograd through
:func:`~workbench.losses.policy_loss`); :func:`method_credit` draws the same table, one panel per
method on one colour scale, the numbers on hover.

A logged group holds the behaviour policy only (``samples.jsonl`` stores its entropies and
log-probs): at ratio 1 KL-Cov's penalty is 0 and ERC clips nothing, which the panels say rather
than inventing a current policy; pass ``logprobs_new`` / ``entropies_new`` (e.g. the group scored
by a later checkpoint) to see them act. The batch statistics (the forking quantile, the
covariances) run over the group's tokens, as in training over an optimizer step's rows.
"""

from __future__ import annotations

import html
import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..algorithms import Algorithm, get_algorithm
from ..losses import LOSS_MODES
from .highlight import _shown
from .redistribution import _takes
from .sources import Group, one_group
from .style import display_name, styled

__all__ = ["DEFAULT_METHODS", "STATUSES", "CREDIT_COLUMNS", "method_credit_table", "method_credit"]

#: The methods shown by default: GTPO and GRPO-S beside the entropy-method family.
DEFAULT_METHODS = (
    "grpo",
    "dapo",
    "gtpo",
    "grpo_s",
    "dapo_forking",
    "clip_cov",
    "kl_cov",
    "entropy_adv",
    "erc",
    "gtpo_surprisal",
    "grpo_s_surprisal",
)
#: A token's status: its gradient weight's sign, or what the method does to it instead.
STATUSES = ("credited", "penalised", "neutral", "dropped", "frozen")
CREDIT_COLUMNS = [
    "method",
    "response",
    "position",
    "token",
    "reward",
    "correct",
    "entropy",
    "logprob",
    "advantage",
    "weight",
    "status",
]
VALUES = {"weight": "gradient weight", "advantage": "advantage"}
DROPPED_COLOR, FROZEN_COLOR = "#bdbdbd", "#222222"
TITLE_CHARS = 110  # characters of a panel's note on one line at about 700 px
PANEL_GAP, ROW_PX, MARGIN_TOP, MARGIN_BOTTOM = 58, 20, 80, 50


def _configured(name: str, settings: dict) -> tuple[Algorithm, dict]:
    """The algorithm ``name`` with the settings that concern it: ``top_entropy_quantile`` (methods
    that use the forking mask), its loss mode's options (``clip_cov_ratio``, ``kl_cov_ratio``, ...),
    and the keyword arguments its advantage function names (``alpha2``, ``kappa``, ...)."""
    algorithm = get_algorithm(name)
    changes = {}
    if "top_entropy_quantile" in settings and algorithm.top_entropy_quantile < 1:
        changes["top_entropy_quantile"] = settings["top_entropy_quantile"]
    mode = {k: v for k, v in settings.items() if k in LOSS_MODES[algorithm.loss_mode].options}
    if mode:
        changes["loss_mode_kwargs"] = {**algorithm.loss_mode_kwargs, **mode}
    kwargs = {k: v for k, v in settings.items() if k in _takes(name) and k not in algorithm.advantage_kwargs}
    return (algorithm.replace(**changes) if changes else algorithm), kwargs


def _needs_logprobs(algorithm: Algorithm) -> bool:
    return algorithm.entropy_signal == "surprisal" or algorithm.loss_mode in ("clip_cov", "kl_cov")


def _padded(values, group: Group) -> np.ndarray | None:
    """Per-response lists (or an ``[n, T]`` array) as ``[n, T]`` floats, 0 at masked positions."""
    if values is None:
        return None
    out = np.zeros(group.mask.shape)
    for i, row in enumerate(values):
        row = np.asarray(row, dtype=float)[: group.mask.shape[1]]
        out[i, : len(row)] = row
    return np.where(group.mask, out, 0.0)


def _status(weight: np.ndarray, dropped: np.ndarray, frozen: np.ndarray) -> np.ndarray:
    status = np.where(weight > 0, "credited", np.where(weight < 0, "penalised", "neutral")).astype(object)
    status[frozen] = "frozen"
    status[dropped] = "dropped"
    return status


def method_credit_table(
    group,
    methods=DEFAULT_METHODS,
    *,
    logprobs_new=None,
    entropies_new=None,
    seed: int = 0,
    **settings,
) -> pd.DataFrame:
    """One row per method and valid token of one group (columns :data:`CREDIT_COLUMNS`).

    ``advantage``: the method's advantage; ``weight``: the token's weight in the gradient of the
    method's loss, ``-N dL/dlogp`` (N valid tokens; the advantage itself under token-mean with
    every token trained, 0 for a dropped or detached token); ``status``: ``credited`` /
    ``penalised`` / ``neutral`` (the sign of the weight), ``dropped`` (outside the forking mask,
    drawn by Clip-Cov: no loss, no gradient) or ``frozen`` (KL-Cov's penalised tokens, ERC's
    detached ones: held at the behaviour policy). Computed by
    :meth:`~workbench.algorithms.Algorithm.token_credit`.

    ``group``: a ``samples.jsonl`` record, a :class:`~workbench.viz.Group`, a list of records
    (:func:`workbench.analysis.rollout_records`), a ``Run`` or a run path (the last logged group
    with right and wrong answers). ``logprobs_new`` / ``entropies_new``: the current policy's
    (default: the behaviour policy's). ``settings`` reach the methods they concern (see
    ``_configured``). ``table.attrs["notes"]``: ``{method: [what this group cannot show]}``,
    methods that need the sampled tokens' log-probs and the group has none included.
    """
    group = one_group(group)
    rewards, entropies, mask = group.tensors()
    logprobs = None if group.logprobs is None else np.where(group.mask, np.nan_to_num(group.logprobs), 0.0)
    current = {"logp_new": _padded(logprobs_new, group), "entropies_new": _padded(entropies_new, group)}
    rows, notes = [], {}
    for name in dict.fromkeys(methods):
        algorithm, kwargs = _configured(name, settings)
        if logprobs is None and _needs_logprobs(algorithm):
            notes[name] = ["the group holds no log-probs of its sampled tokens: not shown"]
            continue
        credit = algorithm.token_credit(
            rewards,
            entropies,
            mask,
            np.zeros(group.mask.shape) if logprobs is None else logprobs,
            **{k: v for k, v in current.items() if v is not None},
            seed=seed,
            **kwargs,
        )
        notes[name] = list(credit.notes)
        weight = credit.weights.numpy()
        status = _status(weight, credit.dropped.numpy(), credit.frozen.numpy())
        for i, t in zip(*np.nonzero(group.mask)):
            rows.append(
                {
                    "method": name,
                    "response": int(i),
                    "position": int(t),
                    "token": group.token(i, t) or "",
                    "reward": float(group.rewards[i]),
                    "correct": bool(group.correct[i]),
                    "entropy": float(group.entropies[i, t]),
                    "logprob": np.nan if logprobs is None else float(logprobs[i, t]),
                    "advantage": float(credit.advantages[i, t]),
                    "weight": float(weight[i, t]),
                    "status": status[i, t],
                }
            )
    table = pd.DataFrame(rows, columns=CREDIT_COLUMNS)
    table.attrs["notes"] = notes
    return table


# ---------------------------------------------------------------------------- the figure


def _grid(table: pd.DataFrame, method: str, column: str, shape, fill) -> np.ndarray:
    rows = table[table["method"] == method]
    out = np.full(shape, fill, dtype=object if isinstance(fill, str) else float)
    out[rows["response"].to_numpy(), rows["position"].to_numpy()] = rows[column].to_numpy()
    return out


def _panels(table: pd.DataFrame, shape) -> list[dict]:
    """The methods' grids, methods with the same weights and statuses merged into one panel."""
    panels: list[dict] = []
    for name in dict.fromkeys(table["method"]):
        grids = {c: _grid(table, name, c, shape, np.nan) for c in ("advantage", "weight")}
        status = _grid(table, name, "status", shape, "")
        same = next(
            (
                p
                for p in panels
                if np.allclose(p["weight"], grids["weight"], atol=1e-6, equal_nan=True)
                and np.allclose(p["advantage"], grids["advantage"], atol=1e-6, equal_nan=True)
                and (p["status"] == status).all()
            ),
            None,
        )
        if same is None:
            panels.append({"methods": [name], "status": status, **grids})
        else:
            same["methods"].append(name)
    return panels


def _panel_title(panel: dict, notes: dict) -> str:
    names = " = ".join(display_name(m) for m in panel["methods"])
    status, valid = panel["status"], panel["status"] != ""
    counts = [f"{int((status == s).sum())} {s}" for s in ("dropped", "frozen") if (status == s).any()]
    head = f"<b>{html.escape(names)}</b>" + (f" · {', '.join(counts)} of {int(valid.sum())} tokens" if counts else "")
    said = [f"{display_name(m)}: {n}" for m in panel["methods"] for n in notes.get(m, [])]
    lines = [line for note in said for line in textwrap.wrap(note, TITLE_CHARS)]
    return "<br>".join([head, *(f"<i>{html.escape(line)}</i>" for line in lines)])


def _hover(group: Group, panel: dict, i: int, t: int) -> str:
    lines = [
        f"{html.escape(' = '.join(display_name(m) for m in panel['methods']))}",
        f"response #{i}, position {t}, token {html.escape(repr(group.token(i, t) or ''), quote=False)}",
        f"entropy {group.entropies[i, t]:.3f} nats",
    ]
    if group.logprobs is not None:
        lines.append(f"log-prob {group.logprobs[i, t]:.3f}")
    lines += [
        f"advantage {panel['advantage'][i, t]:+.3f}",
        f"gradient weight {panel['weight'][i, t]:+.3f}",
        f"status: {panel['status'][i, t]}",
        f"reward {group.rewards[i]:g} {'✓' if group.correct[i] else '✗'}",
    ]
    return "<br>".join(lines)


def _traces(group: Group, panel: dict, rows: list[int], labels: list[str], value: str, tokens: bool) -> list:
    """The panel's heatmap of ``value`` (dropped tokens grey, on their own layer) and the frozen tokens' frames."""
    T = group.mask.shape[1]
    status = panel["status"][rows]
    dropped, frozen = status == "dropped", status == "frozen"
    hover = [[_hover(group, panel, i, t) if group.mask[i, t] else "" for t in range(T)] for i in rows]
    text = [[(group.token(i, t) or "") if tokens and group.mask[i, t] else "" for t in range(T)] for i in rows]
    meta = {"methods": panel["methods"]}
    common = {"x": list(range(T)), "y": labels, "xgap": 1, "ygap": 1, "hoverongaps": False, "textfont": {"size": 11}}
    main = go.Heatmap(
        z=np.where(dropped, np.nan, panel[value][rows]),
        text=np.where(dropped, "", text).tolist(),
        texttemplate="%{text}" if tokens else None,
        hovertext=np.where(dropped, "", hover).tolist(),
        hovertemplate="%{hovertext}<extra></extra>",
        coloraxis="coloraxis",
        name=" = ".join(panel["methods"]),
        meta={**meta, "kind": value},
        **common,
    )
    grey = go.Heatmap(
        z=np.where(dropped, 1.0, np.nan),
        text=np.where(dropped, text, "").tolist(),
        texttemplate="%{text}" if tokens else None,
        hovertext=np.where(dropped, hover, "").tolist(),
        hovertemplate="%{hovertext}<extra></extra>",
        colorscale=[[0, DROPPED_COLOR], [1, DROPPED_COLOR]],
        showscale=False,
        name="dropped",
        meta={**meta, "kind": "dropped"},
        **common,
    )
    where = np.nonzero(frozen)
    frames = go.Scatter(
        x=where[1].tolist(),
        y=[labels[k] for k in where[0]],
        mode="markers",
        marker={"symbol": "square-open", "size": 16, "color": FROZEN_COLOR, "line": {"width": 2}},
        hoverinfo="skip",
        showlegend=False,
        name="frozen",
        meta={**meta, "kind": "frozen"},
    )
    return [main, grey, frames]


def method_credit(
    group,
    methods=DEFAULT_METHODS,
    *,
    value: str = "weight",
    max_responses: int | None = None,
    title: str | None = None,
    ranges: dict | None = None,
    logprobs_new=None,
    entropies_new=None,
    seed: int = 0,
    table: pd.DataFrame | None = None,
    **settings,
) -> go.Figure:
    """Each method's credit of every token of one group, one panel per method (methods with the same
    numbers share one, e.g. "DAPO = ERC"), all on one colour scale of ``value`` (``"weight"``: the
    gradient weight, or ``"advantage"``), red penalised, blue credited; dropped tokens grey, frozen
    ones framed; each panel's title counts them and says what the logged group cannot show.

    Arguments as :func:`method_credit_table`, whose table holds the numbers drawn (``table``: that table of
    this group, already computed; the other arguments are then not used). ``max_responses``: that many
    responses, right and wrong ones in turn; ``ranges={"value": top}`` fixes the colour scale.
    Each trace's ``meta`` has its ``methods`` and ``kind`` (``value``, ``"dropped"``, ``"frozen"``).
    """
    if value not in VALUES:
        raise ValueError(f"value must be one of {list(VALUES)}, got {value!r}")
    group = one_group(group)
    if table is None:
        table = method_credit_table(
            group, methods, logprobs_new=logprobs_new, entropies_new=entropies_new, seed=seed, **settings
        )
    if table.empty:
        raise ValueError(f"no method of {list(methods)} can be shown on this group: {table.attrs['notes']}")
    panels = _panels(table, group.mask.shape)
    rows = _shown(group, max_responses)
    labels = [f"#{i} {'✓' if group.correct[i] else '✗'} r={group.rewards[i]:g}" for i in rows]
    T = group.mask.shape[1]
    titles = [_panel_title(p, table.attrs["notes"]) for p in panels]
    gaps = [PANEL_GAP + 14 * t.count("<br>") for t in titles]
    panel_px = 20 + ROW_PX * len(rows)
    plot_px = len(panels) * panel_px + sum(gaps[1:])
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        subplot_titles=titles,
        vertical_spacing=(sum(gaps[1:]) / max(len(panels) - 1, 1)) / plot_px,
    )
    for k, panel in enumerate(panels, start=1):
        for trace in _traces(group, panel, rows, labels, value, T <= 32):
            fig.add_trace(trace, row=k, col=1)
    top = (ranges or {}).get(value) or float(np.nanmax(np.abs(table[value].to_numpy()))) or 1.0
    fig.update_layout(
        coloraxis={
            "colorscale": "RdBu",
            "cmid": 0,
            "cmin": -top,
            "cmax": top,
            "colorbar": {"title": {"text": VALUES[value]}, "thickness": 12, "len": min(1.0, 400 / plot_px), "y": 1},
        },
        plot_bgcolor="#f4f4f4",
        margin={"t": MARGIN_TOP + gaps[0] - PANEL_GAP, "b": MARGIN_BOTTOM},
        showlegend=False,
    )
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False)
    fig.update_xaxes(showgrid=False, dtick=1 if T <= 16 else None)
    fig.update_xaxes(title_text="position", row=len(panels), col=1)
    fig.update_annotations(font={"size": 12}, align="left", x=0, xanchor="left")
    where = ", ".join(f"{n} {group.info[k]}" for k, n in (("source", "from"), ("step", "step")) if group.info.get(k))
    title = title or f"Which tokens each method credits ({VALUES[value]})" + (f", {where}" if where else "")
    note = "grey: dropped (no loss, no gradient) · framed: frozen (held at the behaviour policy)"
    styled(fig, title=f"{title}<br><sup>{note}</sup>", height=MARGIN_TOP + plot_px + MARGIN_BOTTOM + gaps[0])
    return fig
