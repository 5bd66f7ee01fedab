"""workbench.viz: figure data (not pixels) on synthetic run directories and the spec example."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import workbench
from workbench import viz
from workbench.examples import spec_example
from workbench.runs import load_run

# ---------------------------------------------------------------------------- fixtures


def _response(tokens, entropies, reward, advantages=None):
    n = len(tokens)
    return {
        "text": "".join(tokens),
        "tokens": tokens,
        "entropies": entropies,
        "logprobs": [-0.5 * e for e in entropies],
        "advantages": advantages or [0.0] * n,
        "reward": reward,
        "correct": reward > 0.5,
    }


def _record(step, group=0, scale=1.0):
    """The spec example's group as a samples.jsonl record (entropies times ``scale``)."""
    ex = spec_example()
    responses = []
    for i in range(4):
        n = int(ex["mask"][i].sum())
        tokens = [f"a{i}", "<b>", "7"][:n]
        responses.append(_response(tokens, [scale * float(h) for h in ex["entropies"][i, :n]], float(ex["rewards"][i])))
    return {"step": step, "group": group, "prompt": "1+2=", "algorithm": "gtpo", "responses": responses}


def write_run(root, name, *, algorithm="gtpo", seed=0, metrics=None, evals=None, samples=None, task_params=None):
    path = root / name
    path.mkdir(parents=True)
    config = {
        "algorithm": algorithm,
        "seed": seed,
        "task": "chain",
        "task_params": task_params or {"steps": 8},
        "steps": 3,
    }
    (path / "config.json").write_text(json.dumps(config))
    for file, rows in (("metrics.jsonl", metrics), ("eval.jsonl", evals), ("samples.jsonl", samples)):
        if rows is not None:
            (path / file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _metrics(values, **extra):
    return [
        {"step": s, "accuracy": v, "reward": v, "entropy": 1.0 - v / 2, "grad_norm": 2 * v, **extra}
        for s, v in enumerate(values, start=1)
    ]


def _traces(fig, **meta):
    return [t for t in fig.data if t.meta and all(t.meta.get(k) == v for k, v in meta.items())]


# ---------------------------------------------------------------------------- sources


def test_token_table_flattens_records():
    table = viz.token_table([_record(1), _record(5)])
    assert len(table) == 2 * 10 and list(table.columns) == viz.sources.TOKEN_COLUMNS  # the documented columns
    row = table[(table.step == 5) & (table.response == 2) & (table.position == 1)].iloc[0]
    assert (row.token, row.entropy, row.logprob, row.correct) == ("<b>", 4.0, -2.0, False)
    assert (row.group, row.advantage, row.reward, row.algorithm) == (0, 0.0, 0.0, "gtpo")


def test_run_directory_is_read_through_load_run(tmp_path):
    path = write_run(tmp_path, "r", metrics=_metrics([0.1, 0.2]), samples=[_record(1)])
    runs = viz.as_runs([path, load_run(path), pd.DataFrame(_metrics([0.3]))])
    assert [r.label for r in runs] == ["r", "r", "run2"]
    assert runs[0].algorithm == "gtpo" and len(runs[0].metrics) == 2
    assert len(viz.token_table(path)) == 10
    assert set(viz.token_table([path, path])["source"]) == {"r"}


# ---------------------------------------------------------------------------- token highlight


def _spans(html_text, value):
    """``(text, title)`` of every token span of the ``value`` view of a token_highlight."""
    view = html_text.split(f'class="wb-view wb-view-{value}"')[1].split('class="wb-view ')[0]
    span = r'<span class="wb-tok" style="background:([^"]+)" title="([^"]*)">(.*?)</span>'
    return re.findall(span + r'(?=<span class="wb-tok"|</span></div>)', view, re.S)


def test_token_highlight_header_tokens_and_hover():
    record = {**_record(3), "answer": "3", "source": "run-a"}
    view = viz.token_highlight(record)
    text = view.to_html()
    assert view._repr_html_().count("wb-view-entropy") == 2  # the CSS rule and the view
    assert "prompt <code>1+2=</code>" in text and "gold answer <code>3</code>" in text and "2 of 4 right" in text
    assert "from run-a, step 3, group 0" in text
    spans = _spans(text, "entropy")
    assert len(spans) == 10  # every valid token of the four responses, once per view
    colour, title, token = spans[1]  # response 0, position 1: '<b>' with entropy 4.0, the group's maximum
    assert token == "&lt;b&gt;" and colour == viz.highlight.value_color("entropy", 4.0, 0.0, 4.0)
    title = html.unescape(title)
    assert "token '<b>' (response #0, position 1)" in title and "entropy 4.000 nats" in title
    assert "log-prob -2.000" in title and "advantage +0.000 (logged, gtpo)" in title and "reward 1 ✓" in title
    assert [h.count("✓") for h in re.findall(r'class="wb-label">(.*?)</span>', text)][:4] == [1, 1, 0, 0]


def test_token_highlight_keeps_whitespace_readable():
    responses = [
        _response(["The", " answer", " ", "\n", "12", ".\n", "x"], [0.1] * 7, 1.0),
        _response([" no"], [0.5], 0.0),
    ]
    text = viz.token_highlight(responses).to_html()
    tokens = [t for _, _, t in _spans(text, "entropy")]
    # leading spaces stay spaces, a newline inside a token stays a newline; only pure whitespace gets a marker
    assert tokens[:6] == [
        "The",
        " answer",
        '<span class="wb-ws">·</span>',
        '<span class="wb-ws">↵\n</span>',
        "12",
        ".\n",
    ]
    assert tokens[-1] == " no"
    assert "white-space: pre-wrap" in text


def test_token_highlight_colours_by_each_value_and_picks_a_mixed_group(tmp_path):
    all_right = _record(9)
    for r in all_right["responses"]:
        r.update(reward=1.0, correct=True)
    mixed = {**_record(5), "answer": "3"}
    mixed["responses"][0]["advantages"] = [1.0, 0.5, -1.0]
    view = viz.token_highlight([_record(1), mixed, all_right], value="advantage")
    assert view.group.info["step"] == 5  # the last group with right and wrong answers
    text = view.to_html()
    assert text.index("wb-view wb-view-advantage") < text.index("wb-view wb-view-entropy")  # chosen value first
    colours = [c for c, _, _ in _spans(text, "advantage")]
    assert colours[0] == viz.highlight.value_color("advantage", 1.0, -1.0, 1.0)  # the positive end
    assert colours[2] == viz.highlight.value_color("advantage", -1.0, -1.0, 1.0)  # the negative end
    assert colours[1] != colours[0] != colours[2]
    path = write_run(tmp_path, "r", samples=[_record(1), _record(2)])
    from_run = viz.token_highlight(path, max_responses=2)
    assert from_run.group.info == {"step": 2, "group": 0, "algorithm": "gtpo", "source": "r"}
    assert "1 of 4 right" not in from_run.to_html() and "2 shown" in from_run.to_html()
    assert len(_spans(from_run.to_html(), "entropy")) == 3 + 3  # responses 0 (✓) and 2 (✗)
    with pytest.raises(ValueError, match="value must be one of"):
        viz.token_highlight(mixed, value="reward")


# ---------------------------------------------------------------------------- redistribution


def _panel(fig, kind, algorithm=None):
    return next(
        t for t in fig.data if t.meta["kind"] == kind and (algorithm is None or algorithm in t.meta["algorithms"])
    )


def test_redistribution_shows_entropies_advantages_and_differences():
    ex = spec_example()
    fig = viz.redistribution_figure(ex["rewards"], ex["entropies"], ex["mask"], tokens=[["a", "b", "c"]] * 4)
    mask = ex["mask"].numpy()
    assert [t.meta["kind"] for t in fig.data] == [
        "entropy",
        "advantage",
        "advantage",
        "difference",
        "advantage",
        "difference",
    ]
    titles = [a.text for a in fig.layout.annotations]  # short titles: the colour bars name the quantity
    assert titles == ["token entropy", "GRPO = DAPO", "GTPO", "GRPO-S", "GTPO − GRPO", "GRPO-S − GRPO"]
    assert fig.layout.coloraxis.colorbar.title.text == "token entropy (nats)"
    assert fig.layout.coloraxis2.colorbar.title.text == "advantage"
    assert list(fig.data[0].y) == ["#0 ✓ r=1", "#1 ✓ r=1", "#2 ✗ r=0", "#3 ✗ r=0"]
    entropy = _panel(fig, "entropy")
    np.testing.assert_array_equal(np.asarray(entropy.z, dtype=float)[mask], ex["entropies"].numpy()[mask])
    assert entropy.text[0] == ["a", "b", "c"] and entropy.text[1][2] == ""  # tokens in the cells, padding blank
    grpo = workbench.grpo(ex["rewards"], ex["mask"]).numpy()
    gtpo = workbench.gtpo(**ex).numpy()
    assert _panel(fig, "advantage", "dapo") is _panel(fig, "advantage", "grpo")  # identical: one panel
    for algorithm, expected in (("grpo", grpo), ("gtpo", gtpo), ("grpo_s", workbench.grpo_s(**ex).numpy())):
        panel = _panel(fig, "advantage", algorithm)
        np.testing.assert_array_equal(np.asarray(panel.z, dtype=float)[mask], expected[mask])
        assert np.isnan(np.asarray(panel.z, dtype=float)[~mask]).all()
        # the numbers printed in the cells are the library's advantages
        printed = [float(panel.text[i][t]) for i in range(4) for t in range(3) if mask[i, t]]
        np.testing.assert_allclose(printed, expected[mask], atol=0.005)
    np.testing.assert_allclose(_panel(fig, "advantage", "gtpo").z[0], [0.930469, 0.999393, 0.947700], atol=1e-5)
    difference = np.asarray(_panel(fig, "difference", "gtpo").z, dtype=float)
    np.testing.assert_allclose(difference[mask], (gtpo - grpo)[mask], atol=1e-6)
    # each scale is symmetric and covers its panels: advantages to the largest |A|, each difference panel to its
    # own largest |D| (at least a twentieth of the advantage range)
    assert fig.layout.coloraxis2.cmin == -fig.layout.coloraxis2.cmax == pytest.approx(-np.abs(gtpo[mask]).max())
    assert _panel(fig, "difference", "gtpo").coloraxis == "coloraxis3"
    assert fig.layout.coloraxis3.cmax == pytest.approx(np.abs((gtpo - grpo)[mask]).max())
    assert fig.layout.coloraxis3.cmin == -fig.layout.coloraxis3.cmax
    grpo_s = workbench.grpo_s(**ex).numpy()
    floor = np.abs(gtpo[mask]).max() / 20
    assert fig.layout.coloraxis4.cmax == pytest.approx(max(np.abs((grpo_s - grpo)[mask]).max(), floor))
    # GRPO-S moves these cells by less than 0.005: printed as 0.00, never "-0.00" beside "+0.00"
    printed = [c for row in _panel(fig, "difference", "grpo_s").text for c in row if c]
    assert "0.00" in printed and "-0.00" not in printed and "+0.00" not in printed


def test_redistribution_colour_bars_read_flat_under_their_panels():
    ex = spec_example()
    fig = viz.redistribution_figure(**ex)
    for axis, trace in (("coloraxis", _panel(fig, "entropy")), ("coloraxis3", _panel(fig, "difference", "gtpo"))):
        bar = fig.layout[axis].colorbar
        domain = fig.layout["xaxis" + trace.xaxis[1:]].domain
        assert bar.orientation == "h" and bar.tickangle == 0 and bar.title.side == "top"
        # centred under its own panel, narrower than it, below its bottom edge
        assert bar.x == pytest.approx(sum(domain) / 2) and bar.len < domain[1] - domain[0]
        assert bar.y < fig.layout["yaxis" + trace.yaxis[1:]].domain[0]
    top = fig.layout.coloraxis3.cmax
    assert list(fig.layout.coloraxis3.colorbar.tickvals) == [-top, 0, top]
    assert list(fig.layout.coloraxis3.colorbar.ticktext) == [f"−{top:.2f}", "0", f"+{top:.2f}"]


def test_redistribution_titles_wrap_to_their_columns():
    ex = spec_example()
    many = ("grpo", "gtpo", "gtpo_per_polarity", "gtpo_per_polarity_batch", "grpo_s", "grpo_s_token")
    fig = viz.redistribution_figure(**ex, algorithms=many)
    lines = [line for a in fig.layout.annotations for line in a.text.split("<br>")]
    columns = sum(t.meta["kind"] != "difference" for t in fig.data)  # the entropies and 4 distinct advantages
    assert columns == 5 and max(len(line) for line in lines) <= 56 // columns
    assert any(a.text.startswith("GTPO (per<br>polarity) =") for a in fig.layout.annotations)
    # the figure grows for the extra lines instead of drawing them over the title
    assert fig.layout.margin.t > viz.redistribution_figure(**ex).layout.margin.t


def test_redistribution_routes_keyword_arguments_and_keeps_given_ranges():
    ex = spec_example()
    fig = viz.redistribution_figure(
        **ex,
        algorithms=("grpo", "gtpo", "grpo_s"),
        alpha2=0.5,
        normalize="per_polarity",
        grpo_s={"beta2": 0.9},
        ranges={"advantage": 3.0},
    )
    mask = ex["mask"].numpy()
    z = {a: np.asarray(_panel(fig, "advantage", a).z, dtype=float) for a in ("grpo", "gtpo", "grpo_s")}
    np.testing.assert_array_equal(z["grpo"][mask], workbench.grpo(ex["rewards"], ex["mask"]).numpy()[mask])
    expected = workbench.gtpo(**ex, alpha2=0.5, normalize="per_polarity").numpy()
    np.testing.assert_array_equal(z["gtpo"][mask], expected[mask])
    expected = workbench.grpo_s(**ex, beta2=0.9, normalize="per_polarity").numpy()
    np.testing.assert_array_equal(z["grpo_s"][mask], expected[mask])
    assert (fig.layout.coloraxis2.cmin, fig.layout.coloraxis2.cmax) == (-3.0, 3.0)
    assert "α2 = 0.5" in fig.layout.title.text and "normalize = per_polarity" in fig.layout.title.text
    # a variant keeps what it fixes itself: the shared normalize does not undo gtpo_per_polarity
    adv = viz.algorithm_advantages(ex, ("gtpo_per_polarity",), normalize="joint")["gtpo_per_polarity"]
    np.testing.assert_allclose(adv[0], [-0.447204, 1.341611, 0.0], atol=1e-5)


def test_redistribution_from_sample_has_one_advantage_per_tooltip():
    record = {**_record(7), "source": "run-a"}
    for response in record["responses"]:  # logged advantages that differ from the recomputed ones
        response["advantages"] = [9.0] * len(response["tokens"])
    fig = viz.redistribution_from_sample(record, ("gtpo",))
    ex = spec_example()
    mask = ex["mask"].numpy()
    gtpo = _panel(fig, "advantage", "gtpo")
    np.testing.assert_array_equal(np.asarray(gtpo.z)[mask], workbench.gtpo(**ex).numpy()[mask])
    hover = gtpo.hovertext[0][1]
    assert "&lt;b&gt;" in hover and "'<b>'" not in hover
    assert hover.count("advantage") == 1 and "GTPO advantage: +0.999" in hover and "9.0" not in hover
    assert "run-a" in fig.layout.title.text and "step 7" in fig.layout.title.text
    # BPE strings (notebook 8's SmolLM2 group) are cut to their cell; the hover keeps them whole
    record["responses"][0]["tokens"] = [" together", " answer", " is"]
    entropy = _panel(viz.redistribution_from_sample(record, ("gtpo",)), "entropy", None)
    assert entropy.text[0] == [" together"[:7] + "…", " answer", " is"]  # 24 characters over 3 cells: 8 each
    assert "together" in entropy.hovertext[0][0]


def test_synthetic_group_is_seeded():
    a, b = viz.synthetic_group(6, 10, seed=3), viz.synthetic_group(6, 10, seed=3)
    np.testing.assert_array_equal(a.entropies, b.entropies)
    assert a.correct.tolist() == [True] * 3 + [False] * 3 and a.mask.any(1).all()


# ---------------------------------------------------------------------------- curves


def test_training_curves_band_over_seeds(tmp_path):
    a = write_run(
        tmp_path,
        "a",
        seed=0,
        metrics=_metrics([0.0, 0.2, 0.4]),
        evals=[{"step": 3, "greedy_accuracy": 0.5, "sampled_accuracy": 0.4, "entropy": 1.0}],
    )
    b = write_run(
        tmp_path,
        "b",
        seed=1,
        metrics=_metrics([0.2, 0.6, 0.8]),
        evals=[{"step": 3, "greedy_accuracy": 0.7, "sampled_accuracy": 0.6, "entropy": 1.0}],
    )
    c = write_run(tmp_path, "c", algorithm="grpo", metrics=_metrics([0.1, 0.1, 0.1]))
    fig = viz.training_curves([a, b, c], metrics=("accuracy", "kl_ref", "grad_norm"))
    panels = [ann.text for ann in fig.layout.annotations]
    # kl_ref absent; names a reader understands
    assert panels == ["training accuracy", "gradient norm", "held-out greedy accuracy", "held-out sampled accuracy"]
    mean = _traces(fig, metric="accuracy", group="gtpo", kind="mean")[0]
    assert mean.name == "GTPO"
    np.testing.assert_allclose(mean.y, [0.1, 0.4, 0.6])
    assert _traces(fig, metric="accuracy", group="gtpo", kind="upper")[0].y.tolist() == [0.2, 0.6, 0.8]
    assert _traces(fig, metric="accuracy", group="gtpo", kind="lower")[0].y.tolist() == [0.0, 0.2, 0.4]
    assert not _traces(fig, group="grpo", kind="upper")  # one run: no band
    assert mean.line.color == viz.PALETTE["gtpo"]
    np.testing.assert_allclose(_traces(fig, metric="eval greedy_accuracy", group="gtpo", kind="mean")[0].y, [0.6])
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["GRPO", "GTPO", "band: min–max over runs (up to 2)"]  # one entry per algorithm, and the band

    std = viz.aggregate_runs([a, b], "accuracy", band="std")["gtpo"]
    np.testing.assert_allclose(std["upper"] - std["mean"], np.std([[0.0, 0.2], [0.2, 0.6], [0.4, 0.8]], 1, ddof=1))
    smooth = viz.aggregate_runs([a], "accuracy", smooth=2)["gtpo"]
    np.testing.assert_allclose(smooth["mean"], [0.0, 0.1, 0.3])
    by_run = viz.training_curves({"x": a, "y": b}, metrics=("accuracy",), evals=(), by="run")
    assert [t.name for t in by_run.data] == ["x", "y"]
    groups = viz.training_curves({"joint": [a, b], "per polarity": [c]}, metrics=("accuracy",), evals=())
    assert [t.name for t in groups.data if t.meta.get("kind") == "mean"] == ["joint", "per polarity"]
    np.testing.assert_allclose(_traces(groups, group="joint", kind="mean")[0].y, [0.1, 0.4, 0.6])


def test_training_curves_say_what_they_plot(tmp_path):
    """Units on every y axis, whole-number steps, evaluations unsmoothed ending at the last evaluation."""
    evals = [{"step": s, "greedy_accuracy": v} for s, v in ((0, 0.3), (2, 0.5), (4, 0.6), (6, 0.7), (8, 0.85))]
    a = write_run(tmp_path, "a", metrics=_metrics([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), evals=evals)
    b = write_run(
        tmp_path, "b", seed=1, metrics=_metrics([0.1] * 8), evals=[{**e, "greedy_accuracy": 0.5} for e in evals]
    )
    fig = viz.training_curves([a, b], metrics=("accuracy", "entropy"), evals=("greedy_accuracy",), smooth=3)
    one = viz.training_curves(a, metrics=("accuracy",), evals=("greedy_accuracy",), smooth=3)
    curve = _traces(one, metric="eval greedy_accuracy", kind="mean")[0]
    assert list(curve.y) == [0.3, 0.5, 0.6, 0.7, 0.85] and curve.y[-1] == load_run(a).evals["greedy_accuracy"].iloc[-1]
    assert "markers" in curve.mode
    mean = _traces(fig, metric="eval greedy_accuracy", kind="mean")[0]
    assert mean.y[-1] == pytest.approx((0.85 + 0.5) / 2)  # the mean of the seeds' last evaluations
    smoothed = _traces(one, metric="accuracy", kind="mean")[0]
    np.testing.assert_allclose(smoothed.y[:3], [0.1, 0.15, 0.2])  # training metrics: a trailing mean of 3 steps
    assert "mean of 3 steps" in fig.layout.annotations[0].text
    titles = [fig.layout[name].title.text for name in ("yaxis", "yaxis2", "yaxis3")]
    assert titles == ["accuracy (% of responses)", "entropy (nats per token)", "accuracy (% of problems)"]
    assert fig.layout.xaxis.dtick == 2 and fig.layout.xaxis.tickformat == "d"  # whole steps, never 1.5
    assert fig.layout.template.layout.font.size == viz.style.TEMPLATE.layout.font.size


def test_training_curves_mark_steps_without_update_and_kept_groups(tmp_path):
    rows = _metrics([0.2, 0.3, 0.4])
    rows[1]["grad_norm"] = None  # an older run: nothing kept at step 2, no gradient logged
    old = write_run(tmp_path, "old", metrics=rows)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "dynamic_sampling": True}))
    grpo = write_run(tmp_path, "grpo", algorithm="grpo", metrics=_metrics([0.1, 0.2, 0.3]))
    fig = viz.training_curves([old, grpo], metrics=("accuracy", "grad_norm"), evals=())
    assert fig.layout.annotations[0].text == "training accuracy<br><sup>kept groups only: GTPO</sup>"
    marks = _traces(fig, kind="no_update")
    assert [list(t.x) for t in marks] == [[2]] and marks[0].meta["group"] == "gtpo"
    assert "markers" in _traces(fig, metric="grad_norm", group="gtpo", kind="mean")[0].mode  # lone points stay visible
    new_rows = [{**r, "accuracy_kept": r["accuracy"], "updated": r["step"] != 3} for r in _metrics([0.2, 0.3, 0.4])]
    new = write_run(tmp_path, "new", metrics=new_rows)
    (new / "config.json").write_text(json.dumps({**config, "dynamic_sampling": True}))
    fig = viz.training_curves([new, grpo], metrics=("accuracy", "grad_norm"), evals=())
    assert fig.layout.annotations[0].text == "training accuracy"  # every sampled group: comparable with GRPO
    assert [list(t.x) for t in _traces(fig, kind="no_update")] == [[3]]
    # a run of today's trainer whose dynamic sampling kept no group at all (no *_kept column, every
    # row "updated": false) still covers every sampled group: no note
    idle = write_run(tmp_path, "idle", metrics=[{**r, "updated": False} for r in _metrics([0.0, 0.0, 0.0])])
    (idle / "config.json").write_text(json.dumps({**config, "dynamic_sampling": True}))
    fig = viz.training_curves([idle, grpo], metrics=("accuracy",), evals=())
    assert fig.layout.annotations[0].text == "training accuracy"


# ---------------------------------------------------------------------------- stability


def test_stability_final_accuracy_per_length(tmp_path):
    runs = []
    for algorithm, finals in (("gtpo", {4: (0.9, 0.7), 16: (0.5, 0.3)}), ("grpo_s", {4: (0.8, 0.8), 16: (0.6, 0.6)})):
        for length, values in finals.items():
            for seed, value in enumerate(values):
                evals = [{"step": 1, "greedy_accuracy": 0.0}, {"step": 2, "greedy_accuracy": value}]
                runs.append(
                    write_run(
                        tmp_path,
                        f"{algorithm}-{length}-{seed}",
                        algorithm=algorithm,
                        seed=seed,
                        task_params={"steps": length},
                        metrics=_metrics([0.0, value]),
                        evals=evals,
                    )
                )
    table = viz.stability_table(runs)
    assert set(table["metric"]) == {"eval greedy_accuracy"} and len(table) == 8
    assert set(table["initial"]) == {0.0}
    fig = viz.stability_figure(runs)
    final = {t.meta["group"]: t for t in _traces(fig, kind="final")}
    # lengths as evenly spaced categories: x is the category's index plus the algorithm's small offset
    assert list(fig.layout.xaxis5.ticktext) == ["4", "16"] and list(fig.layout.xaxis5.tickvals) == [0, 1]
    assert [round(x) for x in final["gtpo"].x] == [0, 1] and list(final["gtpo"].customdata) == [4, 16]
    np.testing.assert_allclose(final["gtpo"].y, [0.8, 0.4])
    np.testing.assert_allclose(final["grpo_s"].y, [0.8, 0.6])
    seeds = {t.meta["group"]: t for t in _traces(fig, kind="seed")}  # one dot per seed
    assert [round(x) for x in seeds["gtpo"].x] == [0, 0, 1, 1] and list(seeds["gtpo"].y) == [0.9, 0.7, 0.5, 0.3]
    assert [tuple(c) for c in seeds["gtpo"].customdata] == [(0, 4), (1, 4), (0, 16), (1, 16)]
    assert list(_traces(fig, kind="start")[0].y) == [0.0, 0.0]
    entropy16 = _traces(fig, metric="entropy", length=16, group="gtpo", kind="mean")[0]
    np.testing.assert_allclose(entropy16.y, [1.0, 1 - 0.4 / 2])
    assert len(_traces(fig, metric="grad_norm", kind="mean")) == 4
    assert fig.layout.yaxis.title.text == "entropy (nats per token)"
    # the figure says what its lines and bands are
    assert [t.name for t in _traces(fig, kind="band_legend")] == ["band: min–max over seeds"]
    assert "trailing mean" not in fig.layout.title.text
    smoothed = viz.stability_figure(runs, smooth=3)
    assert "lines: mean over seeds of a trailing mean of 3 steps" in smoothed.layout.title.text
    with pytest.raises(ValueError, match="task_params"):
        viz.stability_table([write_run(tmp_path, "nolen", task_params={"digits": 3}, metrics=_metrics([0.1]))])


# ---------------------------------------------------------------------------- analysis


def test_forking_tokens_are_the_top_entropies_sorted():
    records = [_record(1), _record(9, scale=2.0)]
    top = viz.forking_tokens(records, top=5, context=1)
    all_entropies = sorted(viz.token_table(records)["entropy"], reverse=True)
    assert top["entropy"].tolist() == all_entropies[:5] == [8.0, 8.0, 6.0, 6.0, 4.0]
    first = top.iloc[0]
    assert (first.step, first.response, first.position, first.token) == (9, 0, 1, "<b>")
    assert first.context == "a0⟦<b>⟧7"
    table = viz.forking_tokens_table(top)
    assert isinstance(table.data[0], go.Table) and table.data[0].cells.values[2][0] == "a0⟦&lt;b&gt;⟧7"


def test_forking_tokens_context_is_the_tokens_own_response(tmp_path):
    """Records of several runs share step and group numbers; each context must come from its own response."""
    one, two = _record(5), _record(5, scale=3.0)
    for response in two["responses"]:
        response["tokens"] = [t.upper() + "!" for t in response["tokens"]]
    merged = [one, two]  # as a notebook merges run.samples of several runs: no run key
    top = viz.forking_tokens(merged, top=20, context=2)
    for row in top.itertuples():
        assert row.context.split("⟦")[1].split("⟧")[0] == row.token
    runs = [write_run(tmp_path, "r1", samples=[one]), write_run(tmp_path, "r2", samples=[two])]
    top = viz.forking_tokens(runs, top=3)
    assert list(top["source"]) == ["r2", "r2", "r2"] and all(f"⟦{t}⟧" in c for t, c in zip(top.token, top.context))
    table = viz.forking_tokens_table(top)
    assert table.data[0].cells.values[3][0] == "r2 · step 5"
    # BPE contexts of a real model wrap over several lines: the figure grows with them, no row hidden
    short = viz.forking_tokens_table(top.assign(context="ab⟦c⟧d"))
    wrapped = viz.forking_tokens_table(top.assign(context="x" * 150))
    assert wrapped.layout.height - short.layout.height == 3 * 22 * 3  # 3 rows, 4 lines each instead of 1
    # a run's name with its step wraps in its narrow column too (notebook 3's second table hid 4 rows)
    named = viz.forking_tokens_table(top.assign(context="ab⟦c⟧d", source="gtpo-s2", step=20))
    assert named.layout.height - short.layout.height == 3 * 22 * 1  # "gtpo-s2 · step 20": 2 lines


def test_entropy_distribution_on_shared_bins_and_position_counts():
    records = [_record(1)]
    dist = viz.entropy_distribution(records, nbins=8)
    assert [t.meta["group"] for t in dist.data] == ["correct ✓", "wrong ✗"]
    assert sorted(dist.data[0].x) == [1.0, 1.0, 2.0, 3.0, 4.0]
    assert dist.data[0].xbins == dist.data[1].xbins and dist.data[0].xbins.size == pytest.approx(4.0 / 8)
    assert dist.data[0].histnorm == "probability" and dist.layout.yaxis.title.text == "share of tokens"
    assert viz.entropy_distribution(records, log_y=True).layout.yaxis.type == "log"
    pos = viz.entropy_by_position(records, by=None, min_tokens=1)
    mean = _traces(pos, kind="mean")[0]
    np.testing.assert_allclose(mean.y, [np.mean([2, 3, 1, 3]), np.mean([4, 1, 4, 0.5]), np.mean([1, 0.5])])
    assert list(_traces(pos, kind="tokens")[0].y) == [4, 4, 2]  # how many tokens each position holds
    cut = viz.entropy_by_position(records, by=None, min_tokens=3)
    assert list(_traces(cut, kind="mean")[0].x) == [0, 1]  # position 2 has only 2 tokens
    by_algorithm = viz.entropy_distribution(records, by="algorithm")
    assert by_algorithm.data[0].marker.color == viz.PALETTE["gtpo"] and by_algorithm.data[0].meta["group"] == "GTPO"


def test_entropy_shift_first_and_last_step(tmp_path):
    path = write_run(tmp_path, "r", samples=[_record(1), _record(5, scale=0.5)])
    fig = viz.entropy_shift_figure(path)
    hist = [t for t in fig.data if isinstance(t, go.Histogram)]
    assert [t.meta["group"] for t in hist] == ["step 1", "step 5"] and hist[0].xbins == hist[1].xbins
    assert hist[1].meta["mean"] == pytest.approx(hist[0].meta["mean"] / 2)
    explicit = viz.entropy_shift_figure([_record(1)], [_record(2, scale=0.5)])
    assert [t.meta["group"] for t in explicit.data if isinstance(t, go.Histogram)] == ["early", "late"]
    titles = [a.text for a in fig.layout.annotations]
    assert "mean entropy by position (band: interquartile range)" in titles  # the shaded band is named


# ---------------------------------------------------------------------------- widgets


def _widget_states(root):
    """The synchronised state of ``root`` and every widget below it (what the browser and a saved notebook get)."""
    import ipywidgets

    states, todo = [], [root]
    while todo:
        w = todo.pop()
        states.append(w.get_state())
        todo += [c for c in getattr(w, "children", ()) if isinstance(c, ipywidgets.Widget)]
    return states


def test_shaping_explorer_redraws_whole_figures_with_fixed_colours():
    explorer = viz.shaping_explorer()
    fig = explorer.figure
    assert [t.meta["kind"] for t in fig.data][:2] == ["entropy", "advantage"] and len(fig.data[0].y) == 8
    ranges = (fig.layout.coloraxis2.cmax, fig.layout.coloraxis4.cmax)  # advantages, GRPO-S - GRPO
    grpo_before = np.asarray(_panel(fig, "advantage", "grpo").z, dtype=float)
    explorer.alpha2.value = 0.6
    after = explorer.figure
    group = explorer.group()
    expected = workbench.gtpo(*group.tensors(), alpha2=0.6).numpy()
    np.testing.assert_array_equal(np.asarray(_panel(after, "advantage", "gtpo").z)[group.mask], expected[group.mask])
    np.testing.assert_array_equal(explorer.advantages["gtpo"][group.mask], expected[group.mask])
    np.testing.assert_array_equal(np.asarray(_panel(after, "advantage", "grpo").z, dtype=float), grpo_before)
    # the colour scales did not move with alpha2: panels that did not change keep their colours
    assert (after.layout.coloraxis2.cmax, after.layout.coloraxis4.cmax) == ranges
    assert after.layout.coloraxis3.cmax != fig.layout.coloraxis3.cmax  # GTPO - GRPO changed and fits its values
    # the output area holds the whole new figure, as plotly JSON with nulls where cells are masked
    shown = explorer.view.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert shown["data"][2]["z"] == json.loads(after.to_json())["data"][2]["z"]

    explorer.n.value = 5
    assert len(explorer.figure.data[0].y) == 5 and explorer.group().n == 5
    explorer.algorithms.value = ("gtpo",)
    assert [t.meta["algorithms"] for t in explorer.figure.data] == [[], ["gtpo"], ["gtpo"]]
    stored = viz.shaping_explorer(_record(1))
    assert stored.n.disabled and np.asarray(stored.figure.data[0].z).shape == (4, 3)
    assert "wb-highlight" in stored.children[-2].value  # the stored group as text too


def test_widgets_send_json_without_nan_and_stay_small(tmp_path, monkeypatch):
    import ipywidgets

    sent = []
    monkeypatch.setattr(ipywidgets.Widget, "_send", lambda self, msg, buffers=None: sent.append(msg))
    explorer = viz.shaping_explorer()
    explorer.alpha2.value = 0.3
    explorer.n.value = 12  # a change of structure, as notebook 5's check does
    assert sent, "no widget message was recorded"
    for msg in sent:  # every update the browser receives is JSON (NaN/inf would raise here)
        json.dumps(msg, allow_nan=False, default=lambda o: None)
    launcher = viz.run_launcher(lambda config, callback: None, runs_root=tmp_path)
    for widget in (explorer, launcher):
        states = _widget_states(widget)
        text = json.dumps(states, allow_nan=False, default=lambda o: None)
        assert len(text) < 1_000_000, f"{type(widget).__name__} state weighs {len(text)} bytes"
        bundle = widget._repr_mimebundle_()
        assert "(its controls need a live kernel)" in bundle["text/plain"] and "children=" not in bundle["text/plain"]


def test_widgets_display_a_static_copy_of_their_figure_after_the_live_one(monkeypatch):
    """A reader without a kernel sees the static copy; the live widget carries the marker that hides it."""
    import IPython.display

    shown = []

    class Handle:  # IPython's DisplayHandle: update() replaces the output it displayed
        def __init__(self, index):
            self.index = index

        def update(self, obj, raw=False):
            shown[self.index] = obj

    def display(obj, raw=False, display_id=None):
        shown.append(obj)
        return Handle(len(shown) - 1) if display_id else None

    monkeypatch.setattr(IPython.display, "display", display)
    explorer = viz.shaping_explorer()
    explorer._ipython_display_()
    live, static = shown
    assert json.loads(explorer.figure.to_json()) == static["application/vnd.plotly.v1+json"]
    json.dumps(static, allow_nan=False)
    assert "application/vnd.jupyter.widget-view+json" in live and "children=" not in live["text/plain"]
    assert explorer.children[-1].value == viz.widgets.LIVE_MARKER and "wb-live" in viz.widgets.LIVE_MARKER
    # the static copy follows the controls: saved after n moved to 12, it shows 12 rows, not the first 8
    explorer.n.value = 12
    assert len(shown) == 2 and len(shown[1]["application/vnd.plotly.v1+json"]["data"][0]["y"]) == 12
    # a widget with no figure yet (the launcher before its first run) holds the place with a sentence
    launcher = viz.run_launcher(lambda config, callback: None)
    launcher._ipython_display_()
    assert "no figure yet" in shown[-1]["text/plain"] and len(shown) == 4


def test_run_launcher_with_a_fake_train_fn(tmp_path):
    seen = {}

    def fake_train(config, callback):
        seen.update(config)
        rows = _metrics([0.25, 0.5, 0.75])
        for row in rows:
            callback(row["step"], row)
        path = tmp_path / "runs" / "fake"
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config))
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return load_run(path)

    launcher = viz.run_launcher(fake_train, runs_root=tmp_path / "runs")
    assert launcher.runs.options == ()
    launcher.task.value = "chain"
    launcher.chain_length.value = 12
    launcher.algorithm.value = "grpo_s"
    launcher.steps.value = 3
    launcher.run_button.click()
    assert launcher.error is None
    assert seen["algorithm"] == "grpo_s" and seen["task_params"] == {"steps": 12} and seen["steps"] == 3
    assert seen["output_dir"].endswith("grpo_s-chain-seed0")
    assert launcher.progress.value == launcher.progress.max == 3
    assert launcher.progress.bar_style == "success"
    live = launcher.live.figure
    assert list(live.data[0].x) == [1, 2, 3] and list(live.data[0].y) == [0.25, 0.5, 0.75]
    assert live.layout.template.layout.font.size == viz.style.TEMPLATE.layout.font.size  # the workbench template
    assert launcher.runs.value == (str(tmp_path / "runs" / "fake"),)
    assert _traces(launcher.compare.figure, metric="accuracy", group="fake", kind="mean")


def test_run_launcher_shows_a_failure(tmp_path):

    def failing(config, callback):
        callback(1, {"accuracy": 0.0})
        raise RuntimeError("boom")

    launcher = viz.run_launcher(failing, runs_root=tmp_path)
    assert launcher.launch() is None
    assert isinstance(launcher.error, RuntimeError) and launcher.progress.bar_style == "danger"
    assert "boom" in launcher.status.value and not launcher.run_button.disabled


def test_every_registered_algorithm_has_its_own_name_and_colour():
    from workbench.algorithms import ALGORITHMS
    from workbench.viz.style import NAMES

    assert set(ALGORITHMS) <= set(NAMES) and set(ALGORITHMS) <= set(viz.PALETTE)
    assert len(set(viz.PALETTE.values())) == len(viz.PALETTE)  # no two share a colour
    assert viz.display_name("kl_cov") == "KL-Cov"
    assert viz.display_name("dapo (adaptive bonus)") == "DAPO (adaptive bonus)"  # a method under a setting
    assert viz.display_name("my_run") == "my_run"
    # runs grouped under display names (notebook 9's curves) keep their algorithm's colour
    assert (
        viz.algorithm_color("GRPO-S") == viz.PALETTE["grpo_s"]
        and viz.algorithm_color("KL-Cov") == viz.PALETTE["kl_cov"]
    )


def test_notebook_setup_shows_wide_tables_whole():
    # notebook 7's entropy-by-step table has 22 columns: pandas' default shows 20 and hides the rest
    from workbench.notebook import setup_plotly

    wide = pd.DataFrame([[0.123456] * 22], columns=[f"step {i}" for i in range(22)])
    saved = {k: pd.get_option(k) for k in ("display.max_columns", "display.width", "display.max_colwidth")}
    try:
        pd.reset_option("display.max_columns")
        assert "..." in repr(wide)
        setup_plotly()
        assert "..." not in repr(wide) and "step 21" in repr(wide) and "step 11" in wide._repr_html_()
    finally:
        for k, v in saved.items():
            pd.set_option(k, v)


def test_pass_at_k_panels_say_what_they_show(tmp_path):
    evals = [{"step": s, "greedy_accuracy": 0.3, "pass@1": 0.2, "pass@4": p} for s, p in ((0, 0.4), (5, 0.6))]
    run = write_run(tmp_path, "r", metrics=_metrics([0.1, 0.2, 0.3]), evals=evals)
    fig = viz.training_curves(run, metrics=(), evals=("pass@4",))
    assert (
        fig.layout.annotations[0].text == "held-out pass@4" and fig.layout.yaxis.title.text == "pass@4 (% of problems)"
    )
    assert list(_traces(fig, metric="eval pass@4", kind="mean")[0].y) == [0.4, 0.6]  # never smoothed
