"""One self-contained HTML page of results: the methods × tasks table, budget curves, each run's provenance.

Why a page: researchers share results as pages; this one needs no server and
no network (styles, script and figures are inline; figures are base64 PNG).
The table is the Markdown report's table (``report.build_table``: the same
rows, labels, cell text with 95% intervals, bold and caption), with sortable columns and a filter box; each
row links to the runs behind it, whose config, package versions, git
revision and device open on demand.  Runs recorded from other code than the
current checkout are flagged stale; failed runs without a result are listed.
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from alignbench.report import CONTROLS, Table, build_table, caption
from alignbench.report_render import column_headers, format_cell, format_seconds

esc = html.escape

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} .meta{color:#5b6570}
table{border-collapse:collapse;margin:8px 0} th,td{padding:4px 9px;border-bottom:1px solid #dde2e6;white-space:nowrap}
thead th{background:#f1f4f6;cursor:pointer;user-select:none;text-align:left;vertical-align:bottom}
thead th .ds{display:block;color:#5b6570;font-weight:normal;font-size:12px}
thead th[aria-sort=ascending]::after{content:" ▲"} thead th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.best{font-weight:700}
tr.control td{color:#6b747c} tr.stale td:first-child::before{content:"⚠ ";color:#b35c00}
.flag{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;background:#fde8cf;color:#8a4500}
.flag.failed{background:#fbd5d5;color:#8e1b1b} input#filter{padding:5px 8px;width:320px;font:inherit}
details{margin:3px 0} summary{cursor:pointer} pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
img.figure{max-width:100%;border:1px solid #e3e7ea}
"""

SCRIPT = """
(function(){
  const table=document.getElementById('results'); if(!table) return;
  const body=table.tBodies[0];
  table.querySelectorAll('thead th').forEach((th,col)=>th.addEventListener('click',()=>{
    const dir=th.getAttribute('aria-sort')==='descending'?'ascending':'descending';
    table.querySelectorAll('thead th').forEach(h=>h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort',dir);
    const num=th.dataset.type==='num', sign=dir==='ascending'?1:-1;
    const key=tr=>{const c=tr.cells[col]; return num?(c.dataset.value===''?null:parseFloat(c.dataset.value)):c.textContent.trim();};
    const rows=Array.from(body.rows).map((tr,i)=>[tr,key(tr),i]);
    rows.sort((a,b)=>{ if(a[1]===null||b[1]===null) return (a[1]===null)-(b[1]===null)||a[2]-b[2];
      const d=num?a[1]-b[1]:a[1].localeCompare(b[1],undefined,{numeric:true}); return d?sign*d:a[2]-b[2];});
    rows.forEach(r=>body.appendChild(r[0]));
  }));
  const box=document.getElementById('filter');
  box.addEventListener('input',()=>{const q=box.value.toLowerCase().trim();
    Array.from(body.rows).forEach(tr=>{tr.hidden=q!==''&&!tr.textContent.toLowerCase().includes(q);});});
  document.querySelectorAll('a.run').forEach(a=>a.addEventListener('click',()=>{
    const d=document.getElementById(a.getAttribute('href').slice(1)); if(d) d.open=true;}));
})();
"""


def render_html(records: list[dict[str, Any]], *, by: str = "budget", metrics: Iterable[str] | None = None,
                failures: Iterable[dict[str, Any]] = (), figures: bool = True,
                title: str = "alignbench report") -> str:
    """The page as one string; ``records`` are stored results (``ResultStore``), ``failures`` failed runs."""
    metrics = list(metrics) if metrics is not None else None
    table = build_table(records, by=by, metrics=metrics)
    current = _current_revision()
    stale = {r["run_id"]: why for r in records if (why := stale_reason(r, current))}
    failures = list(failures)
    flags = []
    if stale:
        flags.append(f'<span class="flag">{len(stale)} stale run(s)</span>')
    if failures:
        flags.append(f'<span class="flag failed">{len(failures)} failed run(s)</span>')
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>", '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{len(records)} run(s) · generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC'
        f'{" · code " + esc(current[:10]) if current else ""} {" ".join(flags)}</p>',
        "<h2>Methods × tasks</h2>",
        '<p><input id="filter" type="search" placeholder="filter rows (method, budget, pair…)"> '
        '<span class="meta">click a column header to sort</span></p>',
        table_html(table, stale),
        f'<p class="meta">{esc(caption(table))} ⚠ = recorded by other code than this checkout.</p>',
    ]  # fmt: skip
    if figures:
        parts += ["<h2>Budget curves</h2>", _figure(records, metrics)]
    if failures:
        parts += ["<h2>Failed runs</h2>", _failures_html(failures)]
    parts += ["<h2>Runs and provenance</h2>", _runs_html(records, stale), f"<script>{SCRIPT}</script></body></html>"]
    return "\n".join(parts) + "\n"


def table_html(table: Table, stale: dict[str, str]) -> str:
    """The Table as HTML: every group value shown (rows can be re-sorted), numbers in ``data-value``."""
    heads = column_headers(table)
    th = [f'<th data-type="text">{esc(g)}</th>' for g in table.group_names]
    th += ['<th data-type="text">method</th>', '<th data-type="num">seeds</th>', '<th data-type="num">fit s</th>']
    th += [f'<th data-type="num"><span class="ds">{esc(h)}</span>{esc(lab)}</th>' for h, lab in heads]
    th += ['<th data-type="text">runs</th>']
    out = ['<table id="results">', "<thead><tr>" + "".join(th) + "</tr></thead>", "<tbody>"]
    for r in table.rows:
        ids = sorted(rec["run_id"] for recs in (r.runs.runs.values() if r.runs else ()) for rec in recs)
        cls = [c for c, on in (("control", (r.runs.method if r.runs else r.method) in CONTROLS),
                               ("stale", any(i in stale for i in ids))) if on]
        tds = [f"<td>{esc(v)}</td>" for v in r.group]
        tds += [f"<td>{esc(r.method)}</td>", f'<td class="num" data-value="{r.seeds}">{r.seeds}</td>']
        fit_value = "" if r.fit_s is None else repr(float(r.fit_s))
        tds.append(f'<td class="num" data-value="{fit_value}">{esc(format_seconds(r.fit_s)) or "–"}</td>')
        for c in r.cells:
            value = "" if c is None else repr(float(c.mean))
            klass = "num best" if c is not None and c.bold else "num"
            tds.append(f'<td class="{klass}" data-value="{value}">{esc(format_cell(c, "±")) or "–"}</td>')
        links = " ".join(f'<a class="run" href="#run-{esc(i)}">{k}</a>' for k, i in enumerate(ids, 1))
        tds.append(f"<td>{links}</td>")
        out.append(f'<tr class="{" ".join(cls)}" data-runs="{esc(" ".join(ids))}">' + "".join(tds) + "</tr>")
    return "\n".join(out + ["</tbody></table>"])


def _current_revision() -> str | None:
    from alignbench.provenance import git_revision

    return git_revision().get("commit")


def stale_reason(record: dict[str, Any], current: str | None) -> str | None:
    """Why a run no longer reflects this checkout (other commit, uncommitted changes), or None."""
    git = (record.get("provenance") or {}).get("git") or {}
    commit = git.get("commit")
    if current and commit and commit != current:
        return f"recorded at commit {commit[:10]}, this checkout is {current[:10]}"
    if git.get("dirty"):
        return "recorded with uncommitted changes"
    return None


def _figure(records: list[dict[str, Any]], metrics: list[str] | None) -> str:
    from alignbench.plots import plot_budget_curves

    with tempfile.TemporaryDirectory(prefix="alignbench-report-") as tmp:
        (path,) = plot_budget_curves(records, tmp, metrics=metrics, formats=("png",))
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img class="figure" alt="metric vs paired budget, one panel per task" src="data:image/png;base64,{data}">'


def _failures_html(failures: list[dict[str, Any]]) -> str:
    rows = ['<table id="failed"><thead><tr><th>run</th><th>phase</th><th>error</th><th>when</th></tr></thead><tbody>']
    for f in failures:
        err = f.get("error") or {}
        rows.append(f"<tr><td>{esc(str(f.get('run_id', '?')))}</td><td>{esc(str(f.get('phase', '')))}</td>"
                    f"<td>{esc(str(err.get('type', '')))}: {esc(str(err.get('message', '')))}</td>"
                    f"<td>{esc(str(f.get('failed_at', '')))}</td></tr>")
    return "\n".join(rows + ["</tbody></table>"])


def _runs_html(records: list[dict[str, Any]], stale: dict[str, str]) -> str:
    out = []
    for r in sorted(records, key=lambda r: r["run_id"]):
        spec, prov = r.get("spec", {}), r.get("provenance") or {}
        shown = {
            "spec": spec, "method": r.get("method"), "budget": r.get("budget"), "data": r.get("data"),
            "metrics": r.get("metrics"), "timings": r.get("timings"),
            "provenance": {k: prov.get(k) for k in ("git", "packages", "device", "dtype", "cpu", "hostname", "python",
                                                    "platform") if k in prov},
            "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
        }  # fmt: skip
        flag = f' <span class="flag">stale: {esc(stale[r["run_id"]])}</span>' if r["run_id"] in stale else ""
        device = (prov.get("device") or {}).get("device", "?") if isinstance(prov.get("device"), dict) else prov.get("device", "?")
        commit = ((prov.get("git") or {}).get("commit") or "?")[:10]
        out.append(f'<details id="run-{esc(r["run_id"])}"><summary>{esc(r["run_id"])} · {esc(str(spec.get("method")))} · '
                   f'{esc(str(spec.get("pair")))} · seed {esc(str(spec.get("seed")))} · {esc(str(device))} · '
                   f"git {esc(commit)}{flag}</summary><pre>{esc(json.dumps(shown, indent=2, default=str))}</pre>"
                   "</details>")
    return "\n".join(out)
