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


def expected_cells(results: Path) -> dict[tuple[str, str, str], str]:
    """(budget, pair, method) → flickr8k I→T R@1 cell text, straight from the JSON files."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for p in results.glob("*.json"):
        rec = json.loads(p.read_text())
        if rec.get("status") != "ok" or "retrieval/flickr8k" not in rec["metrics"]:
            continue
        spec = rec["spec"]
        key = (format_budget(rec["budget"]["pairs"]), spec["pair"], method_label(spec["method"], spec["method_options"]))
        values.setdefault(key, []).append(rec["metrics"]["retrieval/flickr8k"]["i2t_R@1"])
    return {k: f"{statistics.mean(v):.1f}" + (f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "")
            for k, v in values.items()}


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
    expected = expected_cells(results)

    def shown() -> list[tuple[tuple[str, str, str], str, str]]:
        out = []
        for tr in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr"):
            if not tr.is_displayed():
                continue
            tds = tr.find_elements(By.TAG_NAME, "td")
            out.append(((tds[0].text, tds[1].text, tds[2].text), tds[col].text, tds[col].get_attribute("data-value")))
        return out

    rows = shown()
    assert {k: text for k, text, _ in rows if text != "–"} == expected  # every stored run, right values
    assert len(rows) == len({k for k, _, _ in rows})

    header = browser.find_elements(By.CSS_SELECTOR, "#results thead th")[col]
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    values = [float(v) for _, _, v in shown() if v]
    assert values == sorted(values, reverse=True) and len(values) == len(expected)
    assert shown()[0][1] == max(expected.values(), key=lambda t: float(t.split()[0]))
    header.click()
    values = [float(v) for _, _, v in shown() if v]
    assert values == sorted(values)

    box = browser.find_element(By.ID, "filter")
    box.send_keys("asif")
    visible = shown()
    assert visible and all(k[2] == "asif" for k, _, _ in visible)
    assert len(visible) == len({k for k in expected if k[2] == "asif"})
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
                assert f">{c.replace('±', '±')}</td>" in text
