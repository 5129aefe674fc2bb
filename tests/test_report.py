"""``alignbench report`` against golden tables, plus the error paths.

The golden result files (tests/golden/results, written by
tests/golden/make_results.py from a simple rule) are fixed; the expected
Markdown / LaTeX / CSV files were checked by hand against that rule (e.g. pal
at 1k: I→T R@1 = 20 + (−1, 0, +1) over seeds → "20.0 ± 1.0").  Set
ALIGNBENCH_UPDATE_GOLDEN=1 to rewrite them after an intended format change.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignbench.cli import main as cli
from alignbench.report import build_table, latex_escape
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
    assert "csa:latent\\_dim=64" in tex or "report_pair_all" in name


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(tmp_path):
    doc = tmp_path / "t.tex"
    table = (GOLDEN / "report_budget.tex").read_text()
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + table + "\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, capture_output=True)
    assert r.returncode == 0, r.stdout[-2000:]


def test_best_per_column_is_bold_within_each_group():
    table = build_table(ResultStore(RESULTS).to_frame(), by="budget")
    names = [f"{c.eval}/{c.metric}" for c in table.columns]
    assert names == [
        "retrieval/flickr8k/i2t_R@1", "retrieval/flickr8k/t2i_R@1", "classification/cifar10/top1",
        "classification/fashion-mnist/top1", "segmentation/camvid/mIoU",
    ]  # fmt: skip
    rows = {(r.group, r.method): r for r in table.rows}
    t2i = names.index("retrieval/flickr8k/t2i_R@1")
    ten_k = ("10k", "effnet-lite0+minilm-l6")
    assert rows[ten_k, "csa:latent_dim=64"].cells[t2i].bold  # 21.0 beats pal's 20.0 at 10k
    assert not rows[ten_k, "pal"].cells[t2i].bold
    assert rows[("1k", "effnet-lite0+minilm-l6"), "pal"].cells[t2i].bold
    # alone in its (budget, pair) group: nothing to compare with, nothing bold
    assert not any(c.bold for c in rows[("10k", "dinov2-s14+minilm-l6"), "pal"].cells)
    # the random control is a row like any method, listed last in its group
    assert [r.method for r in table.rows if r.group == ten_k][-1] == "random"


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
    assert "**20.5 ± 0.7**" in out


def test_plot_writes_png_and_pdf(tmp_path):
    assert cli(["report", "--results", str(RESULTS), "--plot", "--plot-dir", str(tmp_path), "--out",
                str(tmp_path / "t.md")]) == 0  # fmt: skip
    for ext in ("png", "pdf"):
        assert (tmp_path / f"budget_curves.{ext}").stat().st_size > 1000


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 {x} I→T") == r"a\_b \& 50\% \#1 \{x\} I$\rightarrow$T"
