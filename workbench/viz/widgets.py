"""Notebook widgets: a live reward-shaping explorer and a run launcher.

Both are ``ipywidgets.VBox`` subclasses whose controls and ``plotly`` ``FigureWidget``\\ s
are attributes, so a notebook (or a test) can set a control and read the figure back.
"""

from __future__ import annotations

import html
import json
import traceback
from pathlib import Path

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..advantages import NORMALIZE, ZERO_VARIANCE
from ..algorithms import ALGORITHMS
from .curves import training_curves
from .redistribution import DEFAULT_ALGORITHMS, redistribution_from_sample, synthetic_group
from .sources import Group, as_group

__all__ = ["ShapingExplorer", "shaping_explorer", "RunLauncher", "run_launcher"]

_COPIED = ("x", "y", "z", "text", "texttemplate", "hovertext")


def _replace_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Give ``widget`` the traces and layout of ``fig`` (for changes of structure)."""
    widget.data = ()
    widget.layout = fig.layout
    widget.add_traces(fig.data)


class ShapingExplorer(widgets.VBox):
    """Per-token advantages of one group under each algorithm, redrawn as the controls move.

    Controls (attributes): ``algorithms`` (multi-select), ``alpha1``, ``alpha2`` (GTPO),
    ``beta1``, ``beta2`` (GRPO-S), ``normalize``, ``zero_variance``, and for the synthetic
    group ``n``, ``T``, ``seed`` (disabled when a stored group is shown). ``figure`` is the
    ``FigureWidget``; its heatmaps are updated in place while the algorithms stay the same.
    """

    def __init__(self, group=None, algorithms=DEFAULT_ALGORITHMS):
        self.stored: Group | None = None if group is None else as_group(group)
        slider = dict(continuous_update=False, readout_format=".2f")
        self.algorithms = widgets.SelectMultiple(
            options=list(ALGORITHMS), value=tuple(algorithms), description="algorithms", rows=min(7, len(ALGORITHMS))
        )
        self.alpha1 = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="alpha1", **slider)
        self.alpha2 = widgets.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, description="alpha2", **slider)
        self.beta1 = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="beta1", **slider)
        self.beta2 = widgets.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, description="beta2", **slider)
        self.normalize = widgets.ToggleButtons(options=NORMALIZE, value="joint", description="normalize")
        self.zero_variance = widgets.ToggleButtons(options=ZERO_VARIANCE, value="skip", description="zero var.")
        stored = dict(disabled=self.stored is not None)
        self.n = widgets.IntSlider(value=8, min=2, max=32, description="n", continuous_update=False, **stored)
        self.T = widgets.IntSlider(value=12, min=1, max=64, description="T", continuous_update=False, **stored)
        self.seed = widgets.IntText(value=0, description="seed", **stored)
        self.figure = go.FigureWidget()
        controls = (
            self.algorithms,
            self.alpha1,
            self.alpha2,
            self.beta1,
            self.beta2,
            self.normalize,
            self.zero_variance,
            self.n,
            self.T,
            self.seed,
        )
        for control in controls:
            control.observe(lambda _: self.update(), names="value")
        self.update()
        super().__init__(
            [
                widgets.HBox(
                    [
                        self.algorithms,
                        widgets.VBox([self.alpha1, self.alpha2, self.beta1, self.beta2]),
                        widgets.VBox([self.n, self.T, self.seed]),
                    ]
                ),
                widgets.HBox([self.normalize, self.zero_variance]),
                self.figure,
            ]
        )

    def group(self) -> Group:
        """The group shown: the stored one, or the synthetic group of the ``n``, ``T``, ``seed`` controls."""
        return self.stored if self.stored is not None else synthetic_group(self.n.value, self.T.value, self.seed.value)

    def kwargs(self) -> dict:
        """The advantage keyword arguments of the controls (routed by name to each algorithm)."""
        return {
            "alpha1": self.alpha1.value,
            "alpha2": self.alpha2.value,
            "beta1": self.beta1.value,
            "beta2": self.beta2.value,
            "normalize": self.normalize.value,
            "zero_variance": self.zero_variance.value,
        }

    def update(self) -> None:
        """Recompute the advantages and redraw (in place when the algorithms are unchanged)."""
        algorithms = tuple(self.algorithms.value)
        if not algorithms:
            return
        fig = redistribution_from_sample(self.group(), algorithms, title="Per-token advantages", **self.kwargs())
        if tuple(trace.name for trace in self.figure.data) != algorithms:
            _replace_figure(self.figure, fig)
            return
        with self.figure.batch_update():
            for old, new in zip(self.figure.data, fig.data):
                old.update({key: new[key] for key in _COPIED})
            self.figure.layout.height = fig.layout.height


def shaping_explorer(group=None, algorithms=DEFAULT_ALGORITHMS) -> ShapingExplorer:
    """A :class:`ShapingExplorer` on ``group`` (a ``samples.jsonl`` record or any group), or on a
    seeded synthetic group (first half correct) when ``group`` is None."""
    return ShapingExplorer(group, algorithms)


class RunLauncher(widgets.VBox):
    """Start a training run from a notebook and watch it; compare the runs of ``runs_root``.

    Controls (attributes): ``task``, ``chain_length`` (chain task only), ``algorithm``,
    ``steps``, ``seed``, ``run_button``. While a run trains, ``progress`` counts the steps,
    ``status`` shows the last step and ``live`` (a ``FigureWidget``) plots ``live_metrics``;
    a failure is kept in ``error`` and its traceback printed in ``output``. ``runs`` lists the run directories
    of ``runs_root``; selecting some draws :func:`training_curves` into ``compare``.

    ``train_fn(config: dict, callback=fn) -> Run`` defaults to ``workbench.train`` (imported
    when the button is pressed); ``callback(step, row)`` is called after every step. The
    config is ``base_config`` updated with the controls and a fresh ``output_dir`` under
    ``runs_root``. Training runs in the button's handler (the notebook waits for it).
    """

    def __init__(
        self,
        train_fn=None,
        runs_root="runs",
        *,
        tasks=("addition", "chain"),
        base_config=None,
        live_metrics=("accuracy", "entropy"),
        compare_metrics=("accuracy", "entropy", "response_len_mean"),
    ):
        self.train_fn = train_fn
        self.runs_root = Path(runs_root)
        self.base_config = dict(base_config or {})
        self.live_metrics = tuple(live_metrics)
        self.compare_metrics = tuple(compare_metrics)
        self.last_run = None
        self.error: BaseException | None = None
        self.task = widgets.Dropdown(options=list(tasks), description="task")
        self.chain_length = widgets.IntSlider(value=8, min=2, max=64, description="chain length")
        self.algorithm = widgets.Dropdown(options=list(ALGORITHMS), value="gtpo", description="algorithm")
        self.steps = widgets.IntSlider(value=50, min=1, max=2000, description="steps")
        self.seed = widgets.IntText(value=0, description="seed")
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.progress = widgets.IntProgress(value=0, min=0, max=self.steps.value, description="progress")
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.live = go.FigureWidget(self._live_figure())
        self.runs = widgets.SelectMultiple(options=[], description="runs", rows=6, layout=widgets.Layout(width="60%"))
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.compare = go.FigureWidget()
        self._seen = 0

        self.task.observe(lambda _: self._show_chain_length(), names="value")
        self.run_button.on_click(lambda _: self.launch())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.runs.observe(lambda _: self.update_compare(), names="value")
        self._show_chain_length()
        self.refresh()
        super().__init__(
            [
                widgets.HBox([self.task, self.chain_length]),
                widgets.HBox([self.algorithm, self.steps, self.seed]),
                widgets.HBox([self.run_button, self.progress, self.status]),
                self.live,
                self.output,
                widgets.HBox([self.runs, self.refresh_button]),
                self.compare,
            ]
        )

    def _live_figure(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=len(self.live_metrics), subplot_titles=self.live_metrics)
        for col, metric in enumerate(self.live_metrics, start=1):
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name=metric), row=1, col=col)
        fig.update_layout(height=280, showlegend=False, title="live")
        return fig

    def _show_chain_length(self) -> None:
        self.chain_length.layout.display = None if self.task.value == "chain" else "none"

    def config(self) -> dict:
        """The config of the next run: ``base_config`` updated with the controls."""
        task_params = dict(self.base_config.get("task_params") or {})
        if self.task.value == "chain":
            task_params["steps"] = self.chain_length.value
        name = f"{self.algorithm.value}-{self.task.value}-seed{self.seed.value}"
        output_dir, k = self.runs_root / name, 1
        while output_dir.exists():
            k += 1
            output_dir = self.runs_root / f"{name}-{k}"
        return {
            **self.base_config,
            "task": self.task.value,
            "task_params": task_params,
            "algorithm": self.algorithm.value,
            "steps": self.steps.value,
            "seed": self.seed.value,
            "output_dir": str(output_dir),
        }

    def on_step(self, step: int, row: dict) -> None:
        """The training callback: advance the progress bar and append to the live curves."""
        self._seen += 1
        self.progress.value = min(self._seen, self.progress.max)
        with self.live.batch_update():
            for trace, metric in zip(self.live.data, self.live_metrics):
                trace.x = tuple(trace.x or ()) + (step,)
                trace.y = tuple(trace.y or ()) + (row.get(metric),)
        shown = ", ".join(f"{m} {row[m]:.3g}" for m in self.live_metrics if isinstance(row.get(m), (int, float)))
        self.status.value = f"step {step}: {html.escape(shown)}"

    def launch(self):
        """Train one run with the current controls; returns its ``Run`` (None if it failed)."""
        train = self.train_fn
        config = self.config()
        self._seen, self.error, self.last_run = 0, None, None
        self.progress.max, self.progress.value, self.progress.bar_style = config["steps"], 0, ""
        _replace_figure(self.live, self._live_figure())
        self.output.clear_output()
        self.run_button.disabled = True
        try:
            if train is None:
                from workbench import train
            self.last_run = train(config, callback=self.on_step)
        except Exception as exc:  # shown in the widget: a handler's exception would be lost
            self.error = exc
            self.progress.bar_style = "danger"
            self.status.value = f"<b>failed</b>: {html.escape(repr(exc))}"
            with self.output:
                traceback.print_exc()
        else:
            self.progress.bar_style = "success"
            path = str(getattr(self.last_run, "path", config["output_dir"]))
            self.status.value = f"finished: {html.escape(path)}"
            self.refresh()
            if path in dict(self.runs.options).values():
                self.runs.value = (path,)
        finally:
            self.run_button.disabled = False
        return self.last_run

    def refresh(self) -> None:
        """List the run directories of ``runs_root`` (those with a ``config.json``)."""
        options = []
        if self.runs_root.is_dir():
            for path in sorted(p for p in self.runs_root.iterdir() if (p / "config.json").is_file()):
                config = json.loads((path / "config.json").read_text())
                label = (
                    f"{path.name} ({config.get('algorithm')}, {config.get('task')}, "
                    f"seed {config.get('seed')}, {config.get('steps')} steps)"
                )
                options.append((label, str(path)))
        selected = tuple(v for v in self.runs.value if v in dict(options).values())
        self.runs.options = options
        self.runs.value = selected

    def update_compare(self) -> None:
        """Draw :func:`training_curves` of the selected runs into ``compare``."""
        if not self.runs.value:
            _replace_figure(self.compare, go.Figure())
            return
        try:
            fig = training_curves(list(self.runs.value), self.compare_metrics, title="Compare runs")
        except ValueError as exc:  # the selected runs log none of the metrics yet
            fig = go.Figure(layout={"title": str(exc)})
        _replace_figure(self.compare, fig)


def run_launcher(train_fn=None, runs_root="runs", **kwargs) -> RunLauncher:
    """A :class:`RunLauncher` (``train_fn`` defaults to ``workbench.train``)."""
    return RunLauncher(train_fn, runs_root, **kwargs)
