"""The audit's HTML report with matplotlib plots: trend over versions, drift curve, worst replies."""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

from runtime.plots import pyplot, save

ORDER = {"misaligned": 0, "minor": 1, "aligned": 2}


def audits_root(settings, character: str) -> Path:
    """data_dir/audits/<character>/: one folder per audit run or comparison."""
    return settings.data_path / "audits" / character


def audit_folder(settings, character: str, run_id: str) -> Path:
    """data_dir/audits/<character>/<run_id>/"""
    return audits_root(settings, character) / run_id


def plot_trend(runs: list[dict], path: Path) -> Path:
    """Aligned, minor and leakage shares of each run of a character, oldest first."""
    fig, ax = pyplot().subplots(figsize=(7, 3.2))
    labels = [f"{r['version']}\n{r['started'][5:16]}" for r in runs]
    x = range(len(runs))
    for key, style in (("aligned", "o-"), ("minor", "s--"), ("leakage", "^:")):
        ax.plot(list(x), [100 * (r.get(key) or 0) for r in runs], style, label=f"{key} %")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of replies")
    ax.set_title("Persona alignment over versions")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_drift(by_turn: list[dict], path: Path) -> Path:
    """Aligned share by turn index: does the character hold up over a long conversation?"""
    fig, ax = pyplot().subplots(figsize=(7, 3.2))
    turns = [row["turn"] for row in by_turn]
    ax.plot(turns, [100 * row["aligned"] for row in by_turn], "o-", label="aligned %")
    ax.plot(turns, [100 * row["misaligned"] for row in by_turn], "x:", label="misaligned %")
    ax.set_xlabel("turn of the conversation")
    ax.set_ylabel("% of replies")
    ax.set_ylim(0, 100)
    ax.set_title("Drift over a conversation")
    ax.legend(fontsize=8)
    return save(fig, path)


def reason_kind(reason: str) -> str:
    """A reason without its particulars (quotes, numbers), for counting."""
    return re.sub(r"\s*\(.*$", "", re.sub(r"'[^']*'|\"[^\"]*\"", "…", reason)).strip()[:60]


def plot_worst(verdicts: list[dict], path: Path) -> Path:
    """The most common problems behind minor and misaligned verdicts."""
    counts = Counter(reason_kind(r) for v in verdicts if v["verdict"] != "aligned" for r in v.get("reasons", []))
    top = counts.most_common(8)[::-1]
    fig, ax = pyplot().subplots(figsize=(7, 3.2))
    if top:
        ax.barh([name for name, _ in top], [n for _, n in top], color="#c0504d")
        ax.tick_params(axis="y", labelsize=7)
    else:
        ax.text(0.5, 0.5, "no problems found", ha="center", va="center")
    ax.set_xlabel("replies")
    ax.set_title("What went wrong in the worst replies")
    return save(fig, path)


def _row(v: dict) -> str:
    reasons = "<br>".join(html.escape(r) for r in v.get("reasons", [])) or "&nbsp;"
    return (f"<tr class='{v['verdict']}'><td>{html.escape(v['verdict'])}</td><td>{html.escape(str(v.get('probe_id')))}"
            f" #{v.get('turn')}</td><td>{html.escape(v.get('prompt') or '')}</td>"
            f"<td>{html.escape((v.get('reply') or '')[:1200])}</td><td>{reasons}</td></tr>")


def write_report(settings, audits, report, worst: int = 15) -> Path:
    """Write report.html and its PNG plots under data_dir/audits/<character>/<run_id>/."""
    folder = audit_folder(settings, report.character, report.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    runs = [r for r in audits.runs(report.character, kind="probe")]
    plot_trend(runs, folder / "trend.png")
    plot_drift(report.by_turn, folder / "drift.png")
    plot_worst(report.verdicts, folder / "worst.png")
    ranked = sorted(report.verdicts, key=lambda v: (ORDER.get(v["verdict"], 3), v.get("closeness") or 0))
    rows = "\n".join(_row(v) for v in ranked[:worst] if v["verdict"] != "aligned") or (
        "<tr><td colspan=5>every reply was aligned</td></tr>")
    turns = "".join(f"<tr><td>{t['turn']}</td><td>{t['replies']}</td><td>{t['aligned']:.0%}</td></tr>"
                    for t in report.by_turn)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Persona audit: {html.escape(report.character)} {html.escape(report.version)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px;
vertical-align:top;font-size:13px}}table{{border-collapse:collapse}}tr.misaligned td:first-child{{color:#b00}}
tr.minor td:first-child{{color:#b60}}</style></head><body>
<h1>Persona audit of {html.escape(report.character)}</h1>
<p>Run {html.escape(report.run_id)}, weights {html.escape(report.version)}, {len(report.verdicts)} replies,
{report.seconds:.0f} s.</p>
<table><tr><th>aligned</th><th>minor</th><th>misaligned</th><th>leakage</th></tr>
<tr><td>{report.aligned:.0%}</td><td>{report.minor:.0%}</td><td>{report.misaligned:.0%}</td>
<td>{report.leakage:.0%}</td></tr></table>
<h2>Trend over versions</h2><img src="trend.png" alt="trend over versions">
<h2>Drift over a conversation</h2><img src="drift.png" alt="drift curve">
<table><tr><th>turn</th><th>replies</th><th>aligned</th></tr>{turns}</table>
<h2>Worst replies</h2><img src="worst.png" alt="worst replies">
<table><tr><th>verdict</th><th>probe</th><th>prompt</th><th>reply</th><th>reasons</th></tr>
{rows}</table></body></html>"""
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def latest_report_files(settings, character_id: str) -> list[Path]:
    """The PNG plots and report.html of a character's newest audit run (empty if none)."""
    root = audits_root(settings, character_id)
    if not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if (p / "report.html").is_file()), key=lambda p: p.name)
    if not runs:
        return []
    newest = runs[-1]
    return sorted(newest.glob("*.png")) + [newest / "report.html"]
