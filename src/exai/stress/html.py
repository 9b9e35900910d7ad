"""A self-contained HTML report: tables and inline SVG charts, no script, no external resource."""

from __future__ import annotations

import html
import json
from typing import Any

WIDTH, HEIGHT, PAD = 560, 200, 40
COLOURS = ("#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed")
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#111}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
.pass{color:#059669;font-weight:bold}.fail{color:#dc2626;font-weight:bold}.skip{color:#d97706}
.charts{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}figcaption{font-size:.85rem;color:#444}
pre{background:#f6f6f6;padding:.5rem;overflow:auto;font-size:.8rem}
"""


def _line_chart(title: str, xs_ys: list[list[float]], labels: list[str], unit: str) -> str:
    """One line per column after the first (x); axes with min/max labels."""
    if not xs_ys:
        return ""
    xs = [row[0] for row in xs_ys]
    values = [v for row in xs_ys for v in row[1:]]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y1 = max(values) * 1.1 if values and max(values) > 0 else 1.0

    def point(x: float, y: float) -> str:
        px = PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
        py = HEIGHT - PAD - y / y1 * (HEIGHT - 2 * PAD)
        return f"{px:.1f},{py:.1f}"

    lines = []
    for i, label in enumerate(labels):
        pts = " ".join(point(row[0], row[i + 1]) for row in xs_ys)
        colour = COLOURS[i % len(COLOURS)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        lines.append(f'<text x="{PAD + 90 * i}" y="14" fill="{colour}" font-size="11">{html.escape(label)}</text>')
    axes = (
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
        f'<text x="2" y="{PAD + 4}" font-size="10">{y1:.4g}</text>'
        f'<text x="2" y="{HEIGHT - PAD}" font-size="10">0</text>'
        f'<text x="{PAD}" y="{HEIGHT - PAD + 14}" font-size="10">{x0:.0f} s</text>'
        f'<text x="{WIDTH - PAD - 20}" y="{HEIGHT - PAD + 14}" font-size="10">{x1:.0f} s</text>'
    )
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">{axes}{"".join(lines)}</svg>'
    return f"<figure>{svg}<figcaption>{html.escape(title)} ({html.escape(unit)})</figcaption></figure>"


def _bar_chart(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return ""
    top = max(counts.values())
    rows = []
    for i, (name, count) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])):
        width = count / top * (WIDTH - 200)
        y = 10 + i * 22
        rows.append(
            f'<text x="0" y="{y + 12}" font-size="11">{html.escape(name)[:28]}</text>'
            f'<rect x="180" y="{y}" width="{width:.1f}" height="16" fill="#dc2626"/>'
            f'<text x="{185 + width:.1f}" y="{y + 12}" font-size="11">{count}</text>'
        )
    height = 20 + 22 * len(counts)
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">{"".join(rows)}</svg>'
    return f"<figure>{svg}<figcaption>{html.escape(title)}</figcaption></figure>"


def _scenario(s: dict[str, Any]) -> str:
    verdict = "skipped" if s["skipped"] else ("pass" if s["passed"] else "FAIL")
    css = "skip" if s["skipped"] else ("pass" if s["passed"] else "fail")
    checks = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c['required'])}</td>"
        f"<td>{html.escape(c['measured'])}</td><td class={'pass' if c['passed'] else 'fail'}>"
        f"{'ok' if c['passed'] else 'NO'}</td></tr>"
        for c in s["checks"]
    )
    series = s["series"]
    charts = "".join(
        (
            _line_chart("latency percentiles over time", series["latency_ms"], ["p50", "p95", "p99"], "ms"),
            _line_chart("calls finished per second", series["calls_per_s"], ["calls/s"], "calls/s"),
            _line_chart("daemon RSS", series["rss_mb"], ["RSS"], "MB"),
            _line_chart("daemon open file descriptors", series["open_fds"], ["fds"], "count"),
            _bar_chart("errors by category", series["errors_by_category"]),
        )
    )
    notes = "".join(f"<pre>{html.escape(n)}</pre>" for n in s["notes"])
    return (
        f"<h2>{html.escape(s['name'])}: <span class={css}>{verdict}</span> ({s['duration_s']:.0f} s)</h2>"
        f"<p>{html.escape(s['summary'])}</p><p><b>Pass:</b> {html.escape(s['criterion'])}</p>"
        + (f"<p class=skip>{html.escape(s['skipped'])}</p>" if s["skipped"] else "")
        + f"<table><tr><th>check</th><th>required</th><th>measured</th><th></th></tr>{checks}</table>"
        f"<pre>{html.escape(json.dumps(s['figures'], indent=1))}</pre><div class=charts>{charts}</div>{notes}"
    )


def render_html(report: dict[str, Any]) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    head = (
        f"<h1>exai stress: <span class={'pass' if report['passed'] else 'fail'}>{verdict}</span></h1>"
        f"<p><code>{html.escape(report['command'])}</code> on {html.escape(report['date'])}, "
        f"target {html.escape(report['target'])}, storage {html.escape(report['storage'])}, "
        f"{report['machine']['cpus']} CPUs, {report['duration_s']:.0f} s</p>"
    )
    body = head + "".join(_scenario(s) for s in report["scenarios"])
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>exai stress report</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
