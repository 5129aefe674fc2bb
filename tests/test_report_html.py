"""``alignbench report --format html`` opened in a real headless browser (Debian's chromium via selenium).

The page is checked the way a reader uses it: the table rows render with
the values stored in the result files (recomputed here from the JSON, not
from the report code), a column sorts when its header is clicked, the
filter hides rows, the embedded figure decodes, a run's provenance opens,
and a screenshot is saved.  ``make test`` installs chromium and
chromium-driver (apt); set ALIGNBENCH_UPDATE_SCREENSHOT=1 to refresh the
README's screenshot from this test.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import pytest

from alignbench.cli import main as cli
from alignbench.provenance import git_revision
from alignbench.report import format_budget
from alignbench.results import method_label

GOLDEN = Path(__file__).parent / "golden" / "results"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "report_html.png"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver "
                                                                  "(the Makefile's test target installs them)")


@pytest.fixture
def results(tmp_path) -> Path:
    """The golden runs; one recorded at another commit (stale), one at this one, plus a failed run."""
    runs = tmp_path / "runs"
    shutil.copytree(GOLDEN, runs)
    files = sorted(runs.glob("*.json"))
    for path, commit in ((files[0], "0123456789abcdef"), (files[1], git_revision().get("commit"))):
        rec = json.loads(path.read_text())
        rec["provenance"] = {"git": {"commit": commit, "dirty": False}, "device": {"device": "cpu"},
                             "packages": {"torch": "2.14.1"}}
        path.write_text(json.dumps(rec))
    (runs / "linear-x-b10-s0-000000000000.failed.json").write_text(json.dumps({
        "schema_version": 1, "status": "failed", "run_id": "linear-x-b10-s0-000000000000",
        "spec": {"method": "linear"}, "phase": "fit", "failed_at": "2026-01-01T00:00:00+00:00",
        "error": {"type": "TrainingDivergedError", "message": "loss became nan at epoch 3"}}))
    return runs


def stored(results: Path) -> dict[str, float]:
    """run id → flickr8k I→T R@1, straight from the JSON files (not through the report code)."""
    out = {}
    for p in results.glob("*.json"):
        rec = json.loads(p.read_text())
        if rec.get("status") == "ok" and "retrieval/flickr8k" in rec["metrics"]:
            out[rec["run_id"]] = rec["metrics"]["retrieval/flickr8k"]["i2t_R@1"]
    return out


def expected_text(values: list[float]) -> str:
    """Several seeds: mean ± 95% Student-t half-width; one seed: the value (its bootstrap ± is checked elsewhere)."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.1f} ± {half:.1f}"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_html_report_in_a_real_browser(results, tmp_path, browser, capsys):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    assert cli(["report", "--results", str(results), "--format", "html", "--out", str(page)]) == 0
    browser.get(page.as_uri())
    assert browser.title == "alignbench report"

    heads = [th.text.replace("\n", " ") for th in browser.find_elements(By.CSS_SELECTOR, "#results thead th")]
    assert heads[:4] == ["budget", "pair", "method", "seeds"]
    col = heads.index("flickr8k I→T R@1")
    values = stored(results)

    def shown() -> list[tuple[tuple[str, str, str], str, str, list[str]]]:
        out = []
        for tr in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr"):
            if not tr.is_displayed():
                continue
            tds = tr.find_elements(By.TAG_NAME, "td")
            out.append(((tds[0].text, tds[1].text, tds[2].text), tds[col].text, tds[col].get_attribute("data-value"),
                        tr.get_attribute("data-runs").split()))
        return out

    rows = shown()
    assert sorted(i for *_, ids in rows for i in ids) == sorted(values)  # every stored run in exactly one row
    assert len(rows) == len({k for k, *_ in rows})
    for _, text, value, ids in rows:  # each cell: the stored values of that row's runs
        mine = [values[i] for i in ids]
        assert float(value) == pytest.approx(statistics.mean(mine), abs=1e-9)
        assert text == expected_text(mine) if len(mine) > 1 else text.split(" ±")[0] == expected_text(mine)

    header = browser.find_elements(By.CSS_SELECTOR, "#results thead th")[col]
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    order = [float(v) for _, _, v, _ in shown() if v]
    assert order == sorted(order, reverse=True) and len(order) == len(rows)
    best = max(rows, key=lambda r: float(r[2]))
    assert shown()[0][3] == best[3]
    header.click()
    order = [float(v) for _, _, v, _ in shown() if v]
    assert order == sorted(order)

    box = browser.find_element(By.ID, "filter")
    box.send_keys("asif")
    visible = shown()
    assert visible and all(k[2] == "asif" for k, *_ in visible)
    assert len(visible) == len([r for r in rows if r[0][2] == "asif"])
    box.clear()
    box.send_keys(" ")  # clearing via keys fires the input event; a blank query shows every row again
    assert len(shown()) == len(rows)

    decoded = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert decoded and all(ok and w > 200 and h > 100 for ok, w, h in decoded)

    # provenance on demand, stale and failed runs flagged
    stale_rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr.stale")
    assert len(stale_rows) == 1
    link = stale_rows[0].find_element(By.CSS_SELECTOR, "a.run")
    details = browser.find_element(By.ID, link.get_attribute("href").split("#")[1])
    assert details.get_attribute("open") is None
    link.click()
    assert details.get_attribute("open") is not None
    assert "0123456789" in details.text and "stale: recorded at commit 0123456789" in details.text
    assert "1 stale run(s)" in browser.find_element(By.CSS_SELECTOR, "p.meta").text
    failed = browser.find_element(By.ID, "failed").text
    assert "linear-x-b10-s0-000000000000" in failed and "TrainingDivergedError: loss became nan at epoch 3" in failed

    shot = tmp_path / "report.png"
    browser.get(page.as_uri())  # the page as first opened, from the top
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("ALIGNBENCH_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)


def test_html_table_matches_markdown_rows(results, tmp_path):
    """Same rows, labels and cell texts as the Markdown report."""
    md, page = tmp_path / "t.md", tmp_path / "t.html"
    assert cli(["report", "--results", str(results), "--out", str(md)]) == 0
    assert cli(["report", "--results", str(results), "--format", "html", "--out", str(page)]) == 0
    text = page.read_text()
    for line in md.read_text().splitlines()[2:]:
        if not line.startswith("|"):
            continue
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        for c in cells[2:]:
            if c and c != "–":
                assert f">{c}</td>" in text
