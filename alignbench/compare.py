"""``alignbench report --compare A,B``: is A's difference to B real?

Per budget/pair group where both rows exist and per selected metric: the
paired difference A − B, its 95% interval and two-sided p-value — a paired t
test over the seeds both rows share when there are ≥ 3, else a paired
bootstrap over the same test queries (or images), as METHODS.md asks before a
table may claim a difference.  Row labels are the table's (``pal``,
``pal [K=128]``), or ``pal†`` for the tuned row of each group (its chosen
settings differ per budget and pair); an unknown one gets a "did you mean".
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable

from alignbench.errors import ConfigError
from alignbench.report import DECIMALS, UNIT_WORDS, build_table
from alignbench.results import TUNED_MARK


def split_labels(text: str) -> list[str]:
    """'pal [K=128; image-layer 9],linear' → two labels (commas inside [...] do not split)."""
    out, depth, cur = [], 0, ""
    for ch in str(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def compare_report(
    records: list[dict[str, Any]], labels: list[str], *, by: str = "budget", metrics: Iterable[str] | None = None
) -> str:
    """A Markdown table of paired differences between the two rows named ``labels``."""
    from tabulate import tabulate

    from alignbench.aggregate import Resampler, compare

    if len(labels) != 2 or labels[0] == labels[1]:
        raise ConfigError(f"--compare takes two different row labels, e.g. pal,linear (got {', '.join(labels) or 'none'})")
    resampler = Resampler()
    table = build_table(records, by=by, metrics=metrics, resampler=resampler)
    known = sorted({r.method for r in table.rows})
    for lab in labels:
        if lab not in known and not any(_tuned_name(k) == lab for k in known):
            variants = [k for k in known if k.split(" [")[0] == lab.split(" [")[0]]  # 'csa' → 'csa [s_dim=64]'
            close = list(dict.fromkeys(variants + difflib.get_close_matches(lab, known, n=3, cutoff=0.4)))[:4]
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"no row {lab!r} in these results{hint} (rows: {', '.join(known)})")
    a_label, b_label = labels
    groups: dict[tuple, dict[str, Any]] = {}
    for r in table.rows:
        groups.setdefault(r.group, {})[r.method] = r
    out, mixed = [], set()
    for group, members in groups.items():
        a, b = (_pick(members, lab, group) for lab in labels)
        if a is None or b is None:
            continue
        mixed |= feature_bits_differ([a.runs, b.runs])
        for j, col in enumerate(table.columns):
            ca, cb = a.cells[j], b.cells[j]
            if ca is None or cb is None:
                continue
            test = compare(a.runs, b.runs, col.eval, col.metric, resampler)
            row = {**dict(zip(table.group_names, group)), "metric": f"{col.where} {col.label}",
                   a_label: f"{ca.mean:.{DECIMALS}f}", b_label: f"{cb.mean:.{DECIMALS}f}"}  # fmt: skip
            if test is None:
                row.update({"A − B": f"{ca.mean - cb.mean:+.{DECIMALS}f}", "95% CI": "–", "p": "–",
                            "test": "none (no shared seeds or stored outcomes)"})  # fmt: skip
            else:
                n = f"{test.n} seeds" if test.test == "paired t" else f"{test.n:,} {UNIT_WORDS.get(col.task, 'units')}"
                row.update({"A − B": f"{test.diff:+.{DECIMALS}f}", "95% CI": f"[{test.low:+.{DECIMALS}f}, {test.high:+.{DECIMALS}f}]",
                            "p": _p(test.p), "test": f"{test.test} ({n})"})  # fmt: skip
            out.append(row)
    if not out:
        raise ConfigError(f"{a_label!r} and {b_label!r} never share a {' and '.join(table.group_names)}: nothing to compare")
    body = tabulate([list(r.values()) for r in out], headers=list(out[0]), tablefmt="pipe", disable_numparse=True)
    note = (f"A = {a_label}, B = {b_label}; percent points. Paired t over ≥ 3 shared seeds, else a paired bootstrap over "
            "the same test queries (retrieval, classification) or images (segmentation); p two-sided.")  # fmt: skip
    if mixed:
        note += (f" Warning: these runs read different bits of the same cached features ({', '.join(sorted(mixed))}), "
                 "encoded on different machines or versions; a difference between A and B then includes the "
                 "encodings' (re-run both on one feature cache).")  # fmt: skip
    return body + "\n\n" + note + "\n"


def feature_bits_differ(row_runs: Iterable[Any]) -> set[str]:
    """Cache entries (paths) that the given rows' runs read with different content digests.

    Runs stored before results recorded digests say nothing and are left out.
    """
    seen: dict[str, set[str]] = {}
    for rr in row_runs:
        for recs in rr.runs.values():
            for rec in recs:
                for f in rec.get("features") or []:
                    if f.get("digest") and f.get("path"):
                        seen.setdefault(f["path"], set()).add(f["digest"])
    return {path for path, digests in seen.items() if len(digests) > 1}


def _tuned_name(label: str) -> str | None:
    """'pal† [lr=0.01; tau_p=0.05]' → 'pal†' (a tuned row's settings differ per budget and pair); others → None."""
    name = label.split(" [")[0]
    return name if name.endswith(TUNED_MARK) else None


def _pick(members: dict[str, Any], label: str, group: tuple) -> Any:
    """The group's row with this label; a bare ``pal†`` is the group's one tuned pal row."""
    if label in members:
        return members[label]
    named = [r for k, r in members.items() if _tuned_name(k) == label]
    if len(named) > 1:
        raise ConfigError(f"{label!r} names {len(named)} rows in {' '.join(map(str, group))}: "
                          f"{', '.join(repr(r.method) for r in named)}; give one's full label")  # fmt: skip
    return named[0] if named else None


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
