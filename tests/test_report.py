"""``alignbench report`` against golden tables, plus the error paths.

The golden result files (tests/golden/results, written by
tests/golden/make_results.py from a simple rule) are fixed; the expected
Markdown / LaTeX / CSV files were checked by hand against that rule (e.g. pal
at 1k: I→T R@1 = 20 + (−1, 0, +1) over seeds → "20.0 ± 1.0").  Set
ALIGNBENCH_UPDATE_GOLDEN=1 to rewrite them after an intended format change.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignbench.cli import main as cli
from alignbench.report import build_table, latex_escape
from alignbench.identity import fit_id_of, run_id_of
from alignbench.results import ResultStore

GOLDEN = Path(__file__).parent / "golden"
RESULTS = GOLDEN / "results"
CASES = [
    (["--format", "markdown", "--by", "budget"], "report_budget.md"),
    (["--format", "latex", "--by", "budget"], "report_budget.tex"),
    (["--format", "markdown", "--by", "pair"], "report_pair.md"),
    (["--format", "csv", "--by", "budget"], "report_budget.csv"),
    (["--format", "latex", "--by", "pair", "--metric", "all"], "report_pair_all.tex"),
]


@pytest.mark.parametrize("args, golden", CASES, ids=[c[1] for c in CASES])
def test_report_matches_golden(args, golden, tmp_path):
    out = tmp_path / golden
    assert cli(["report", "--results", str(RESULTS), "--out", str(out), *args]) == 0
    if os.environ.get("ALIGNBENCH_UPDATE_GOLDEN"):
        shutil.copy(out, GOLDEN / golden)
    assert out.read_text() == (GOLDEN / golden).read_text()


def test_report_prints_to_stdout(capsys):
    assert cli(["report", "--results", str(RESULTS)]) == 0
    assert capsys.readouterr().out == (GOLDEN / "report_budget.md").read_text()


def _latex_columns(line: str) -> int:
    cells = line.rstrip("\\ \n").split(" & ")
    return sum(int(m.group(1)) if (m := re.match(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)


@pytest.mark.parametrize("name", ["report_budget.tex", "report_pair_all.tex"])
def test_latex_is_a_valid_booktabs_table(name):
    tex = (GOLDEN / name).read_text()
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert body[0].startswith("\\begin{tabular}{") and body[-1] == "\\end{tabular}"
    assert body.count("\\toprule") == 1 and body.count("\\bottomrule") == 1 and "\\midrule" in body
    assert body.index("\\toprule") < body.index("\\midrule") < body.index("\\bottomrule")
    text = "\n".join(body)
    depth = 0
    for ch in re.sub(r"\\[{}]", "", text):  # escaped braces are text
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    outside_math = re.sub(r"\$[^$]*\$", "", text)
    assert not re.search(r"(?<!\\)[_%&#](?! )", outside_math.replace(" & ", " ")), "unescaped special character"
    n_cols = len(re.match(r"\\begin\{tabular\}\{(\w+)\}", body[0]).group(1))
    rows = [line for line in body if line.endswith("\\\\")]
    assert rows and all(_latex_columns(r) == n_cols for r in rows)
    assert "csa [latent\\_dim=64]" in tex and "pal [image-layer 9]" in tex
    assert "s.d." not in tex and "95\\% confidence interval" not in tex  # the caption is in comments


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (make test installs it)")
@pytest.mark.parametrize("name", ["report_budget.tex", "report_pair_all.tex"])
def test_latex_compiles(tmp_path, name):
    doc = tmp_path / "t.tex"
    table = (GOLDEN / name).read_text()
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + table + "\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True)
    assert r.returncode == 0, r.stdout[-2000:]


def _records(root=RESULTS):
    return ResultStore(root).load_all()


def test_bold_is_the_best_and_what_a_paired_test_cannot_tell_from_it():
    table = build_table(_records(), by="budget")
    names = [f"{c.eval}/{c.metric}" for c in table.columns]
    assert names == [
        "retrieval/flickr8k/i2t_R@1", "retrieval/flickr8k/t2i_R@1", "classification/cifar10/top1",
        "classification/fashion-mnist/top1", "segmentation/camvid/mIoU",
    ]  # fmt: skip
    rows = {(r.group, r.method): r for r in table.rows}
    i2t, t2i = names.index("retrieval/flickr8k/i2t_R@1"), names.index("retrieval/flickr8k/t2i_R@1")
    ten_k = ("10k", "effnet-lite0+minilm-l6")
    assert rows[ten_k, "csa [latent_dim=64]"].cells[t2i].bold  # 21.0 is the best T→I at 10k
    # linear (20.0, one seed) vs csa on the same 500 caption queries: paired bootstrap p < 0.05 → not bold
    assert not rows[ten_k, "linear"].cells[t2i].bold
    # pal's three seeds share one seed with csa and have no outcomes: no test, so no claim of a tie
    assert not rows[ten_k, "pal"].cells[t2i].bold
    assert rows[ten_k, "pal"].cells[i2t].bold and not rows[ten_k, "pal [image-layer 9]"].cells[i2t].bold
    assert rows[("1k", "effnet-lite0+minilm-l6"), "pal"].cells[t2i].bold
    # alone in its (budget, pair) group: nothing to compare with, nothing bold
    assert not any(c.bold for c in rows[("10k", "dinov2-s14+minilm-l6"), "pal"].cells)
    # the random control is a row like any method, listed last in its group
    assert [r.method for r in table.rows if r.group == ten_k][-1] == "random"


def _variant(rec, **metric_values):
    """A copy of a golden record as another method, with some retrieval metrics replaced."""
    rec = copy.deepcopy(rec)
    rec["spec"]["method"] = rec["method"]["name"] = rec["resolved"]["method"]["name"] = "linear"
    rec["run_id"], rec["fit_id"] = run_id_of(rec["resolved"]), fit_id_of(rec["resolved"])  # ids hash the identity
    rec["metrics"]["retrieval/flickr8k"].update(metric_values)
    return rec


def test_an_entry_within_noise_of_the_best_is_bold_too(tmp_path):
    pal = [r for r in _records() if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000]
    assert sorted(r["spec"]["seed"] for r in pal) == [0, 1, 2]  # pal 1k I→T R@1: 19, 20, 21 by seed
    noisy = {0: 21.0, 1: 18.0, 2: 20.5}  # mean 19.83 < 20, differences (−2, 2, 0.5): p = 0.90
    clear = {0: 15.0, 1: 14.0, 2: 13.0}  # pal T→I is 16, 15, 14: differences (1, 1, 1), p = 0
    store = ResultStore(tmp_path)
    for r in pal:
        store.write(r)
        store.write(_variant(r, **{"i2t_R@1": noisy[r["spec"]["seed"]], "t2i_R@1": clear[r["spec"]["seed"]]}))
    table = build_table(store.load_all(), by="budget")
    rows = {r.method: r for r in table.rows}
    assert rows["pal"].cells[0].bold and rows["linear"].cells[0].bold
    assert rows["pal"].cells[1].bold and not rows["linear"].cells[1].bold


def test_runs_differing_in_the_image_layer_alone_are_two_rows():
    table = build_table(_records(), by="budget")
    pal_10k = [r for r in table.rows if r.group == ("10k", "effnet-lite0+minilm-l6") and r.method.startswith("pal")]
    assert [(r.method, r.seeds) for r in pal_10k] == [("pal", 3), ("pal [image-layer 9]", 3)]
    assert [round(r.cells[0].mean, 6) for r in pal_10k] == [25.0, 22.0]  # not averaged into 23.5


def test_fit_seconds_is_the_median_of_the_rows_own_fits(tmp_path):
    """Issue 13 wants fit times in the table: the median over seeds, a reused stored fit (timed 0) left out."""
    store = ResultStore(tmp_path)
    pal_1k = [r for r in _records() if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000]
    for r, fit_s in zip(pal_1k, (30.0, 0.0, 200.0)):
        r["timings"]["fit"] = fit_s
        if fit_s == 0.0:  # this seed evaluated a stored fit: nothing was fitted, nothing timed
            r["fit"] = {"state": None, "reused": True}
        store.write(r)
    table = build_table(store.load_all(), by="budget")
    assert [(r.method, r.seeds, r.fit_s) for r in table.rows] == [("pal", 3, 115.0)]  # median of 30 and 200
    assert "|     115 |" in cli_output(tmp_path, "--format", "markdown")
    assert "pal & 3 & 115 &" in cli_output(tmp_path, "--format", "latex")


def cli_output(results, *args) -> str:
    out = results.parent / "out.txt"
    assert cli(["report", "--results", str(results), "--out", str(out), *args]) == 0
    return out.read_text()


def test_a_typed_default_is_one_row_with_the_untyped_runs(tmp_path):
    store = ResultStore(tmp_path)
    for r in _records():
        if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000:
            if r["spec"]["seed"] == 2:  # same resolved config, spelled out: pal:tau_p=0.03
                r["spec"]["method_options"] = {"tau_p": 0.03}
                r["method"]["config"] = {"tau_p": 0.03}
            else:
                r["method"]["config"] = {"tau_p": 0.03}
            store.write(r)
    table = build_table(store.load_all(), by="budget")
    assert [(r.method, r.seeds) for r in table.rows] == [("pal", 3)]


def test_two_segmentation_protocols_are_two_columns_never_averaged(tmp_path):
    slide = "segmentation/camvid@slide"
    store = ResultStore(tmp_path)
    for r in _records():
        if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000:
            if r["spec"]["seed"] == 2:  # this seed was evaluated with ClearCLIP's sliding windows only
                r["metrics"][slide] = {k: v + 40.0 for k, v in r["metrics"].pop("segmentation/camvid").items()}
                ev = {"key": slide, "task": "segmentation", "dataset": "camvid", "split": "test",
                      "protocol": {"name": "slide"}}
                for evals in (r["evals"], r["resolved"]["evals"]):
                    evals[:] = [e for e in evals if e["key"] != "segmentation/camvid"] + [ev]
                (r.get("outcomes") or {}).pop("segmentation/camvid", None)
                r["run_id"] = run_id_of(r["resolved"])
            store.write(r)
    records = store.load_all()
    whole = [r["metrics"]["segmentation/camvid"]["mIoU"] for r in records if "segmentation/camvid" in r["metrics"]]
    table = build_table(records, by="budget")
    cols = {c.eval: j for j, c in enumerate(table.columns) if c.task == "segmentation"}
    assert set(cols) == {"segmentation/camvid", slide}
    (row,) = table.rows
    assert row.cells[cols["segmentation/camvid"]].mean == pytest.approx(sum(whole) / 2)  # seeds 0 and 1 only
    assert row.cells[cols[slide]].mean == pytest.approx(next(
        r["metrics"][slide]["mIoU"] for r in records if slide in r["metrics"]))
    from alignbench.report_render import column_headers

    assert [h for h, _ in column_headers(table)][-2:] == ["camvid", "camvid@slide"]
    # plots and --compare name a column by what was evaluated, protocol included (not by the dataset alone)
    assert [table.columns[cols[k]].where for k in ("segmentation/camvid", slide)] == ["camvid", "camvid@slide"]


def test_segmentation_with_a_background_class_shows_foreground_and_no_background_miou_beside(tmp_path):
    """Issue 13: PAL's reference reports VOC over foreground classes; the table shows it beside mIoU by default
    where the dataset has a background class (CamVid has none: mIoU alone)."""
    from alignbench.report import select_columns

    store = ResultStore(tmp_path)
    for r in _records():
        r["metrics"]["segmentation/voc"] = {"mIoU": 30.0, "mIoU_fg": 28.0, "mIoU_nobg": 35.0, "fwIoU": 50.0}
        r["evals"].append({"key": "segmentation/voc", "task": "segmentation", "dataset": "voc", "split": "val"})
        store.write(r)
    cols = [c for c in select_columns(store.load_all()) if c.task == "segmentation"]
    assert [(c.dataset, c.metric) for c in cols] == [("camvid", "mIoU"), ("voc", "mIoU"), ("voc", "mIoU_fg"),
                                                    ("voc", "mIoU_nobg")]
    out = cli_output(tmp_path, "--format", "markdown", "--by", "budget")
    assert "voc mIoU (fg)" in out and "voc mIoU (no bg)" in out and "camvid mIoU (fg)" not in out


def _resolved(rec, *, layer=12, K=512, val=("flickr8k", "dev"), typed=None):
    """A record in the resolved shape (schema 2): full config, resolved layers, split dicts, feature keys."""
    rec = copy.deepcopy(rec)
    rec["spec"]["method_options"] = dict(typed or {})
    rec["resolved"] = {
        "pair": rec["spec"]["pair"], "image": {"encoder": "effnet-lite0", "layer": layer},
        "text": {"encoder": "minilm-l6", "layer": 6}, "dtype": "fp32",
        "method": {"name": "pal", "version": 1, "config": {"K": K, "tau_p": 0.03}},
        "train": {"dataset": "flickr8k", "split": "train"}, "val": {"dataset": val[0], "split": val[1]},
        "budget": rec["budget"]["pairs"], "seed": rec["spec"]["seed"], "evals": [],
        "feature_keys": {"train": {"images": f"effnet-lite0/flickr8k-train-L{layer}"}},
    }  # fmt: skip
    rec["run_id"], rec["fit_id"] = run_id_of(rec["resolved"]), fit_id_of(rec["resolved"])  # ids hash the identity
    return rec


def test_labels_of_resolved_records_show_only_what_differs_from_the_defaults(tmp_path):
    store = ResultStore(tmp_path)
    for r in _records():
        if r["spec"]["method"] != "pal" or r["budget"]["pairs"] != 1000:
            continue
        store.write(_resolved(r))
        store.write(_resolved(r, typed={"tau_p": "0.03"}))  # the default spelled out: the same row
        r["spec"]["encoder"]["image_layer"] = 9  # the spec set --image-layer 9
        store.write(_resolved(r, layer=9))
        store.write(_resolved(r, layer=9, K=128, typed={"K": "128"}))
        r["spec"]["encoder"]["image_layer"] = None
        r["spec"]["val"] = "coco:dev"
        store.write(_resolved(r, val=("coco", "dev")))
    rows = build_table(store.load_all(), by="budget").rows
    assert sorted((r.method, r.seeds) for r in rows) == [
        ("pal", 3), ("pal [K=128; image-layer 9]", 3), ("pal [image-layer 9]", 3), ("pal [val coco:dev]", 3),
    ]  # fmt: skip


def test_tuned_rows_never_redefine_the_default_and_show_only_the_settings_they_chose(tmp_path):
    """Where tuned runs outnumber default runs, the default row is still the bare method name: a tuned run's
    ``lr`` implies ``lr_range_test=false`` (not a label part of its own); ``--compare pal†,pal`` names the
    tuned row of each group, whatever it chose there."""
    one, two = ResultStore(tmp_path / "one"), ResultStore(tmp_path / "two")
    for r in (r for r in _records() if r["spec"]["method"] == "pal" and r["budget"]["pairs"] == 1000):
        base = _resolved(r)
        base["resolved"]["method"]["config"]["lr_range_test"] = True
        base["run_id"], base["fit_id"] = run_id_of(base["resolved"]), fit_id_of(base["resolved"])
        for study, lr in (("pal|recall|seeds=0", 0.02), ("pal|val_loss|seeds=0", 0.005)):
            tuned = _resolved(r, typed={"lr": lr, "tau_p": 0.1})
            tuned["resolved"]["method"]["config"].update(lr=lr, tau_p=0.1, lr_range_test=False)
            tuned["run_id"], tuned["fit_id"] = run_id_of(tuned["resolved"]), fit_id_of(tuned["resolved"])
            tuned["spec"]["tuned"] = {"study": study, "trial": 3}
            tuned["metrics"] = {k: {m: v + 1.0 for m, v in ms.items()} for k, ms in r["metrics"].items()}
            for store in (two, one) if study.startswith("pal|recall") else (two,):
                store.write(tuned)
        one.write(base)
        two.write(base)
    labels = sorted(r.method for r in build_table(two.load_all(), by="budget").rows)
    assert labels == ["pal", "pal† [lr=0.005; tau_p=0.1]", "pal† [lr=0.02; tau_p=0.1]"]
    # two tuned rows in one group: the bare name is ambiguous and the error lists both
    from alignbench.compare import compare_report
    from alignbench.errors import ConfigError

    with pytest.raises(ConfigError, match="names 2 rows"):
        compare_report(two.load_all(), ["pal†", "pal"])
    out = compare_report(one.load_all(), ["pal†", "pal"])
    assert "| 1k " in out and "+1.0" in out and "paired t (3 seeds)" in out
    with pytest.raises(ConfigError, match="no row 'linear†'"):
        compare_report(one.load_all(), ["linear†", "pal"])


def test_compare_prints_paired_differences_with_ci_and_p(capsys):
    assert cli(["report", "--results", str(RESULTS), "--compare", "pal,pal [image-layer 9]"]) == 0
    out = capsys.readouterr().out
    # differences are exactly 3 on every seed: paired t over 3 seeds, p < 0.001
    assert "| 10k      | effnet-lite0+minilm-l6 | flickr8k I→T R@1 " in out
    assert "+3.0" in out and "paired t (3 seeds)" in out and "< 0.001" in out
    assert cli(["report", "--results", str(RESULTS), "--compare", "csa [latent_dim=64],linear"]) == 0
    out = capsys.readouterr().out
    t2i = next(line for line in out.splitlines() if "T→I R@1" in line)
    assert "paired bootstrap (500 test queries)" in t2i and "+1.0" in t2i
    # bad input: unknown label (did you mean the variant), one label, the same label twice
    assert cli(["report", "--results", str(RESULTS), "--compare", "csa,linear"]) == 2
    assert "did you mean 'csa [latent_dim=64]'" in capsys.readouterr().err
    assert cli(["report", "--results", str(RESULTS), "--compare", "pal"]) == 2
    assert cli(["report", "--results", str(RESULTS), "--compare", "pal,pal"]) == 2


def test_compare_warns_when_the_rows_read_different_bits_of_the_same_features(tmp_path, capsys):
    """Results record each feature entry's content digest; runs that read one entry with different bits (encoded
    on another machine) are named by ``--compare``: their difference includes the encodings'."""
    res = tmp_path / "results"
    shutil.copytree(RESULTS, res)
    files = sorted(res.glob("pal-*.json"))
    for f in files:
        rec = json.loads(f.read_text())
        rec["features"] = [{"kind": "texts", "path": "minilm-l6/flickr8k-test-L5-fp32-x", "digest": "a" * 32}]
        f.write_text(json.dumps(rec))
    assert cli(["report", "--results", str(res), "--compare", "pal,pal [image-layer 9]"]) == 0
    assert "Warning" not in capsys.readouterr().out
    rec = json.loads(files[-1].read_text())
    rec["features"][0]["digest"] = "b" * 32
    files[-1].write_text(json.dumps(rec))
    assert cli(["report", "--results", str(res), "--compare", "pal,pal [image-layer 9]"]) == 0
    out = capsys.readouterr().out
    assert "Warning: these runs read different bits of the same cached features (minilm-l6/flickr8k-test-L5-fp32-x)" in out


def test_caption_names_the_interval_and_its_unit_and_never_sd():
    text = (GOLDEN / "report_budget.md").read_text()
    assert "s.d." not in text and "Student t over seeds" in text
    assert "bootstrap interval over test queries" in text and "p ≥ 0.05" in text


def test_metric_selection_and_unknown_metric(capsys):
    assert cli(["report", "--results", str(RESULTS), "--metric", "mIoU,t2i_R@5", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert ",mIoU," in out and ",t2i_R@5," in out and ",i2t_R@1," not in out
    assert cli(["report", "--results", str(RESULTS), "--metric", "miou_fg"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_empty_missing_and_foreign_results_folders(tmp_path, capsys):
    assert cli(["report", "--results", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["report", "--results", str(empty)]) == 2
    assert "no alignbench results" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "package.json").write_text('{"name": "something else"}')
    (foreign / "list.json").write_text("[1, 2, 3]")
    assert cli(["report", "--results", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "none of its 2 JSON files is an alignbench result" in err
    assert "package.json" in err and "list.json" in err  # each skipped file is named


def test_corrupted_result_is_reported_skipped_and_untouched(tmp_path):
    results = tmp_path / "runs"
    shutil.copytree(RESULTS, results)
    victim = sorted(results.glob("pal-effnet*-b1000-s0-*.json"))[0]
    broken = victim.read_bytes()[:200]  # a truncated write from some other tool
    victim.write_bytes(broken)
    r = subprocess.run([sys.executable, "-m", "alignbench.cli", "report", "--results", str(results)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out, err = r.stdout, r.stderr
    assert victim.name in err and "damaged" in err  # a warning on stderr names the file
    assert victim.read_bytes() == broken
    # the other two pal seeds at 1k are still reported: mean of 20+0 and 20+1
    assert "**20.5 ± 6.4**" in out  # t(0.975, 1) · 0.707 / √2 = 12.706 · 0.5 = 6.35


def test_plot_writes_png_and_pdf_with_the_tables_ci_bands(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    bands = []
    real = Axes.fill_between

    def record(self, x, low, high, **kw):  # the real call still draws; we keep what it was given
        bands.append((id(self), list(x), list(low), list(high)))
        return real(self, x, low, high, **kw)

    monkeypatch.setattr(Axes, "fill_between", record)
    assert cli(["report", "--results", str(RESULTS), "--plot", "--plot-dir", str(tmp_path), "--out",
                str(tmp_path / "t.md")]) == 0  # fmt: skip
    for ext in ("png", "pdf"):
        assert (tmp_path / f"budget_curves.{ext}").stat().st_size > 1000
    # pal on the default pair, I→T R@1: 20 ± 2.48 at 1k, 25 ± 2.48 at 10k (t over 3 seeds), as in the table
    i2t = [b for b in bands if b[1] == [1000.0, 10000.0]]
    half = 4.302653 / 3**0.5
    assert any(low == pytest.approx([20 - half, 25 - half]) and high == pytest.approx([20 + half, 25 + half])
               for _, _, low, high in i2t)  # fmt: skip


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 {x} I→T") == r"a\_b \& 50\% \#1 \{x\} I$\rightarrow$T"


def test_the_caption_states_the_search_behind_tuned_rows_and_names_rows_that_had_another(tmp_path):
    """The † sentence is a claim (same trials and objective for every tuned row): it is read from the results,
    and a row whose study was smaller (still running, stopped early) or had another objective is named."""
    from alignbench.report import search_budgets

    store = ResultStore(tmp_path)
    for r in (r for r in _records() if r["spec"]["method"] == "pal" and r["budget"]["pairs"] in (1000, 10000)):
        tuned = _resolved(r, typed={"lr": 0.02})
        tuned["resolved"]["method"]["config"].update(lr=0.02)
        tuned["run_id"], tuned["fit_id"] = run_id_of(tuned["resolved"]), fit_id_of(tuned["resolved"])
        n = 20 if r["budget"]["pairs"] == 1000 else 9
        tuned["spec"]["tuned"] = {"study": "pal|recall|seeds=0", "trial": 3, "n_trials": n, "objective": "recall"}
        store.write(tuned)
    records = store.load_all()
    one_budget = build_table([x for x in records if x["budget"]["pairs"] == 1000], by="budget")
    assert "20 trials per study, objective recall, for every tuned row" in one_budget.caption
    both = build_table(records, by="budget")
    assert search_budgets(both) == {(20, "recall"): ["1k effnet-lite0+minilm-l6 pal†"],
                                    (9, "recall"): ["10k effnet-lite0+minilm-l6 pal†", "10k dinov2-s14+minilm-l6 pal†"]}
    assert "NOT the same search for every tuned row: 9 trials, objective recall, except 1k effnet-lite0+minilm-l6 " \
           "pal†: 20 trials, objective recall" in both.caption
