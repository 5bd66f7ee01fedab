"""Notebook widgets: a live reward-shaping explorer and a run launcher.

Both are ``ipywidgets.VBox`` subclasses whose controls are attributes, so a notebook (or a test)
can set a control and read the figure back. Figures are plain ``plotly`` figures shown in a
:class:`FigureView` (an ``ipywidgets.Output``) and replaced as a whole on every change: plotly's
``FigureWidget`` updated in place stops redrawing in the browser when the number of rows changes,
sends NaN (which JSON cannot carry) and stores plotly.js in the notebook with every figure.
Displayed, each widget is followed by a static copy of its figure (plotly JSON), hidden while the
widget runs, so a notebook read without a kernel shows a figure instead of the widget's ``repr``.
"""

from __future__ import annotations

import html
import json
import time
import traceback
from pathlib import Path

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..advantages import NORMALIZE, ZERO_VARIANCE
from ..algorithms import ALGORITHMS
from .curves import METRIC_LABELS, step_axis, training_curves
from .highlight import token_highlight
from .method_credit import DEFAULT_METHODS, VALUES, method_credit, method_credit_table
from .redistribution import (
    DEFAULT_ALGORITHMS,
    algorithm_advantages,
    colour_ranges,
    redistribution_from_sample,
    synthetic_group,
)
from .sources import Group, as_group, one_group
from .style import algorithm_color, display_name, styled

__all__ = [
    "FigureView",
    "ShapingExplorer",
    "shaping_explorer",
    "MethodExplorer",
    "method_explorer",
    "RunLauncher",
    "run_launcher",
    "figure_bundle",
    "LIVE_MARKER",
]

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def figure_bundle(fig: go.Figure) -> dict:
    """The display data of ``fig``: plotly JSON (NaN as null) that JupyterLab's plotly renderer draws."""
    title = fig.layout.title.text or "figure"
    return {PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<plotly figure: {title}>"}


class FigureView(widgets.Output):
    """A plotly figure in an output area; :meth:`show` replaces it whole (never trace by trace)."""

    def __init__(self, fig: go.Figure | None = None, **kwargs):
        super().__init__(**kwargs)
        self.figure = go.Figure()
        if fig is not None:
            self.show(fig)

    def show(self, fig: go.Figure) -> None:
        self.figure = fig
        self.outputs = ({"output_type": "display_data", "data": figure_bundle(fig), "metadata": {}},)


#: Shown inside a live widget: hides the static copy of its figure displayed just after it (JupyterLab's
#: output areas). Without a kernel the widget cannot render, so the static figure stays visible. (After, not
#: before: a plotly output above a widget whose figure is replaced makes JupyterLab's plotly renderer throw.)
LIVE_MARKER = (
    '<span class="wb-live"></span>'
    "<style>.jp-OutputArea-child:has(.wb-live) + .jp-OutputArea-child {display: none}</style>"
)


class _StaticFallback:
    """Displays a widget as two outputs: the widget, then a static copy of its figure (plotly JSON)
    that the widget's :data:`LIVE_MARKER` hides while a kernel runs it. A reader without a kernel (a
    saved notebook reopened, an exported page) sees the figure, and a sentence instead of the
    widget's ``repr``."""

    _description = "widget"

    def _static_figure(self) -> go.Figure | None:
        return None

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = f"{self._description} (its controls need a live kernel)"
        return bundle

    _static_handle = None

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self._static_handle = display(self._static_bundle(), raw=True, display_id=True)

    def _static_bundle(self) -> dict:
        fig = self._static_figure()
        if fig is None or not fig.data:
            return {"text/plain": f"{self._description}: no figure yet (it draws one in a live kernel)"}
        note = f"{self._description}: a static copy of its figure (hidden while the widget runs)"
        return {**figure_bundle(fig), "text/plain": note}

    def _refresh_static(self) -> None:
        """The static copy follows the widget: redrawn (same output, by its display id) with its figure,
        so a notebook saved after the controls moved shows their last state, not the first."""
        if self._static_handle is not None:
            self._static_handle.update(self._static_bundle(), raw=True)


_SLIDER = {"continuous_update": False, "style": {"description_width": "60px"}}


class ShapingExplorer(_StaticFallback, widgets.VBox):
    """Token entropies, per-token advantages and differences from GRPO of one group, redrawn as the controls move.

    Controls (attributes): ``algorithms`` (multi-select), ``alpha1``, ``alpha2`` (GTPO),
    ``beta1``, ``beta2`` (GRPO-S), ``normalize``, ``zero_variance``, and for the synthetic
    group ``n``, ``T``, ``seed`` (disabled when a stored group is shown). ``figure`` is the
    current figure, ``advantages`` the current ``{algorithm: [n, T]}`` values; colour scales stay
    fixed while the settings move and are refitted when the group changes. A stored group is
    also shown as text (:func:`~workbench.viz.token_highlight`).
    """

    _description = "Shaping explorer"

    def __init__(self, group=None, algorithms=DEFAULT_ALGORITHMS):
        self.stored: Group | None = None if group is None else as_group(group)
        rows = min(7, len(ALGORITHMS))
        self.algorithms = widgets.SelectMultiple(
            options=[(display_name(a), a) for a in ALGORITHMS],
            value=tuple(algorithms),
            description="algorithms",
            rows=rows,
        )
        self.alpha1 = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="alpha1", **_SLIDER)
        self.alpha2 = widgets.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, description="alpha2", **_SLIDER)
        self.beta1 = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="beta1", **_SLIDER)
        self.beta2 = widgets.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.01, description="beta2", **_SLIDER)
        self.normalize = widgets.ToggleButtons(options=NORMALIZE, value="joint", description="normalize")
        self.zero_variance = widgets.ToggleButtons(options=ZERO_VARIANCE, value="skip", description="zero variance")
        fixed = {"disabled": self.stored is not None}
        self.n = widgets.IntSlider(value=8, min=2, max=32, description="n", **_SLIDER, **fixed)
        self.T = widgets.IntSlider(value=12, min=1, max=64, description="T", **_SLIDER, **fixed)
        self.seed = widgets.IntText(value=0, description="seed", layout={"width": "160px"}, **fixed)
        self.view = FigureView(layout={"width": "100%"})
        self.advantages: dict = {}
        self._ranges: dict | None = None
        for control in (
            self.algorithms,
            self.alpha1,
            self.alpha2,
            self.beta1,
            self.beta2,
            self.normalize,
            self.zero_variance,
        ):
            control.observe(lambda _: self.update(), names="value")
        for control in (self.n, self.T, self.seed):
            control.observe(lambda _: self.update(new_group=True), names="value")
        self.update(new_group=True)
        text = [widgets.HTML(token_highlight(self.stored).to_html())] if self.stored is not None else []
        toggles = {"style": {"description_width": "90px", "button_width": "150px"}}
        for toggle in (self.normalize, self.zero_variance):
            toggle.style = toggles["style"]
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
                self.view,
                *text,
                widgets.HTML(LIVE_MARKER),
            ],
            layout={"width": "100%"},
        )

    @property
    def figure(self) -> go.Figure:
        return self.view.figure

    def _static_figure(self) -> go.Figure:
        return self.figure

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

    def update(self, new_group: bool = False) -> None:
        """Recompute the advantages and draw a new figure (colour scales refitted only for a new group)."""
        algorithms = tuple(self.algorithms.value)
        if not algorithms:
            return
        group, kwargs = self.group(), self.kwargs()
        if new_group or self._ranges is None:
            self._ranges = {k: 1.25 * v for k, v in colour_ranges(group, DEFAULT_ALGORITHMS, **kwargs).items()}
        self.advantages = algorithm_advantages(group, algorithms, **kwargs)
        title = "Per-token advantages" + ("" if self.stored is None else " of the stored group")
        self.view.show(redistribution_from_sample(group, algorithms, ranges=self._ranges, title=title, **kwargs))
        self._refresh_static()


def shaping_explorer(group=None, algorithms=DEFAULT_ALGORITHMS) -> ShapingExplorer:
    """A :class:`ShapingExplorer` on ``group`` (a ``samples.jsonl`` record or any group), or on a
    seeded synthetic group (first half correct) when ``group`` is None."""
    return ShapingExplorer(group, algorithms)


class MethodExplorer(_StaticFallback, widgets.VBox):
    """Every entropy method on one group (:func:`~workbench.viz.method_credit`), redrawn as the controls move.

    Controls (attributes): ``methods`` (multi-select), ``value`` (gradient weight or advantage),
    ``top_entropy_quantile`` (the forking methods' rho), ``clip_cov_ratio``, ``kl_cov_ratio``
    (the fraction of tokens Clip-Cov drops, KL-Cov penalises), ``seed`` (Clip-Cov's draw).
    ``table`` is the current :func:`~workbench.viz.method_credit_table`, ``figure`` the current
    figure; the colour scale stays fixed while the settings move.
    """

    _description = "Method explorer"

    def __init__(self, group, methods=DEFAULT_METHODS, *, max_responses: int | None = None):
        self.stored, self.max_responses = one_group(group), max_responses
        self.methods = widgets.SelectMultiple(
            options=[(display_name(a), a) for a in ALGORITHMS], value=tuple(methods), description="methods", rows=8
        )
        self.value = widgets.ToggleButtons(options=[(v, k) for k, v in VALUES.items()], description="colour by")
        wide = {"continuous_update": False, "style": {"description_width": "110px"}}
        self.top_entropy_quantile = widgets.FloatSlider(
            value=0.2, min=0.05, max=1.0, step=0.05, description="forking rho", **wide
        )
        ratio = {"min": -4, "max": -0.3, "step": 0.1, "readout_format": ".4f", **wide}
        self.clip_cov_ratio = widgets.FloatLogSlider(value=2e-4, description="clip_cov_ratio", **ratio)
        self.kl_cov_ratio = widgets.FloatLogSlider(value=0.002, description="kl_cov_ratio", **ratio)
        self.seed = widgets.IntText(value=0, description="seed", layout={"width": "160px"})
        self.view = FigureView(layout={"width": "100%"})
        self.table = None
        self._ranges: dict = {}
        controls = (self.methods, self.value, self.top_entropy_quantile, self.clip_cov_ratio, self.kl_cov_ratio)
        for control in (*controls, self.seed):
            control.observe(lambda _: self.update(), names="value")
        self.update()
        sliders = widgets.VBox(
            [self.value, self.top_entropy_quantile, self.clip_cov_ratio, self.kl_cov_ratio, self.seed]
        )
        super().__init__([widgets.HBox([self.methods, sliders]), self.view, widgets.HTML(LIVE_MARKER)])

    @property
    def figure(self) -> go.Figure:
        return self.view.figure

    def _static_figure(self) -> go.Figure:
        return self.figure

    def settings(self) -> dict:
        """The methods' settings of the controls (routed by name, see :func:`~workbench.viz.method_credit_table`)."""
        return {
            "top_entropy_quantile": self.top_entropy_quantile.value,
            "clip_cov_ratio": self.clip_cov_ratio.value,
            "kl_cov_ratio": self.kl_cov_ratio.value,
            "seed": self.seed.value,
        }

    def update(self) -> None:
        """Recompute the table and draw a new figure (each colour scale fitted on its first use)."""
        methods, value = tuple(self.methods.value), self.value.value
        if not methods:
            return
        self.table = method_credit_table(self.stored, methods, **self.settings())
        if value not in self._ranges:
            self._ranges[value] = float(self.table[value].abs().max()) or 1.0
        shown = {"value": value, "max_responses": self.max_responses, "ranges": self._ranges}
        self.view.show(method_credit(self.stored, methods, table=self.table, **shown))
        self._refresh_static()


def method_explorer(group, methods=DEFAULT_METHODS, *, max_responses: int | None = None) -> MethodExplorer:
    """A :class:`MethodExplorer` on ``group`` (a ``samples.jsonl`` record, records, a run or a :class:`Group`)."""
    return MethodExplorer(group, methods, max_responses=max_responses)


class RunLauncher(_StaticFallback, widgets.VBox):
    """Start a training run from a notebook and watch it; compare the runs of ``runs_root``.

    Controls (attributes): ``task``, ``chain_length`` (chain task only), ``algorithm``,
    ``steps``, ``seed``, ``run_button``. While a run trains, ``progress`` counts the steps,
    ``status`` shows the last step and ``live`` (a :class:`FigureView`) plots ``live_metrics``;
    a failure is kept in ``error`` and its traceback printed in ``output``. ``runs`` lists the run
    directories of ``runs_root``; selecting some draws :func:`training_curves` into ``compare``.

    ``train_fn(config: dict, callback=fn) -> Run`` defaults to ``workbench.train`` (imported
    when the button is pressed); ``callback(step, row)`` is called after every step. The
    config is ``base_config`` updated with the controls and a fresh ``output_dir`` under
    ``runs_root``. Training runs in the button's handler (the notebook waits for it).
    """

    _description = "Run launcher"

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
        self.train_fn, self.runs_root = train_fn, Path(runs_root)
        self.base_config = dict(base_config or {})
        self.live_metrics, self.compare_metrics = tuple(live_metrics), tuple(compare_metrics)
        self.last_run, self.error = None, None
        self.task = widgets.Dropdown(options=list(tasks), description="task")
        self.chain_length = widgets.IntSlider(value=8, min=2, max=64, description="chain length")
        self.algorithm = widgets.Dropdown(
            options=[(display_name(a), a) for a in ALGORITHMS], value="gtpo", description="algorithm"
        )
        self.steps = widgets.IntSlider(value=50, min=1, max=2000, description="steps")
        self.seed = widgets.IntText(value=0, description="seed", layout={"width": "160px"})
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.progress = widgets.IntProgress(value=0, min=0, max=self.steps.value, description="progress")
        self.status, self.output = widgets.HTML(), widgets.Output()
        self.live = FigureView(layout={"width": "100%"})
        self.runs = widgets.SelectMultiple(options=[], description="runs", rows=6, layout={"width": "70%"})
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.compare = FigureView(layout={"width": "100%"})
        self._points: dict[str, list] = {}
        self._drawn = 0.0
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
                widgets.HTML(LIVE_MARKER),
            ],
            layout={"width": "100%"},
        )

    def _static_figure(self) -> go.Figure:
        return self.compare.figure if self.compare.figure.data else self.live.figure

    def _live_figure(self) -> go.Figure:
        labels = [METRIC_LABELS.get(m, (m, m, None)) for m in self.live_metrics]
        fig = make_subplots(
            rows=1, cols=len(self.live_metrics), subplot_titles=[label[0] for label in labels], horizontal_spacing=0.1
        )
        steps = self._points.get("step", [])
        for col, (metric, label) in enumerate(zip(self.live_metrics, labels), start=1):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=self._points.get(metric, []),
                    mode="lines+markers",
                    name=label[0],
                    line={"color": algorithm_color(self.algorithm.value)},
                ),
                row=1,
                col=col,
            )
            fig.update_yaxes(title_text=label[1], tickformat=label[2], row=1, col=col)
        fig.update_xaxes(title_text="step")
        step_axis(fig, max(steps, default=1))
        return styled(fig, title=f"live: {self.config_label()}", height=300).update_layout(showlegend=False)

    def config_label(self) -> str:
        return f"{display_name(self.algorithm.value)} on {self.task.value}, seed {self.seed.value}"

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
        """The training callback: advance the progress bar, extend the live curves (redrawn twice a second at most)."""
        self.progress.value = min(self.progress.value + 1, self.progress.max)
        self._points.setdefault("step", []).append(step)
        for metric in self.live_metrics:
            value = row.get(metric)
            self._points.setdefault(metric, []).append(value if isinstance(value, (int, float)) else None)
        if time.monotonic() - self._drawn > 0.5 or self.progress.value == self.progress.max:
            self.live.show(self._live_figure())
            self._drawn = time.monotonic()
        shown = ", ".join(f"{m} {row[m]:.3g}" for m in self.live_metrics if isinstance(row.get(m), (int, float)))
        self.status.value = f"step {step}: {html.escape(shown)}"

    def launch(self):
        """Train one run with the current controls; returns its ``Run`` (None if it failed)."""
        train, config = self.train_fn, self.config()
        self.error, self.last_run, self._points = None, None, {}
        self.progress.max, self.progress.value, self.progress.bar_style = config["steps"], 0, ""
        self.live.show(self._live_figure())
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
            self.live.show(self._live_figure())
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
                    f"{path.name} ({display_name(config.get('algorithm'))}, {config.get('task')}, "
                    f"seed {config.get('seed')}, {config.get('steps')} steps)"
                )
                options.append((label, str(path)))
        selected = tuple(v for v in self.runs.value if v in dict(options).values())
        self.runs.options = options
        self.runs.value = selected

    def update_compare(self) -> None:
        """Draw :func:`training_curves` of the selected runs into ``compare``."""
        if not self.runs.value:
            self.compare.show(go.Figure())
            return
        try:
            fig = training_curves(list(self.runs.value), self.compare_metrics, by="run", title="Compare runs")
        except ValueError as exc:  # the selected runs log none of the metrics yet
            fig = styled(go.Figure(), title=str(exc))
        self.compare.show(fig)
        self._refresh_static()


def run_launcher(train_fn=None, runs_root="runs", **kwargs) -> RunLauncher:
    """A :class:`RunLauncher` (``train_fn`` defaults to ``workbench.train``)."""
    return RunLauncher(train_fn, runs_root, **kwargs)
