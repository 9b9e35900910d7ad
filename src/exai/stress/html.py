"""A self-contained HTML report for people: the verdict and why, the machine it ran on, then each scenario's checks,
figures (as tables: the raw data stays in stress.json) and charts. Inline SVG, no script, no external resource."""

from __future__ import annotations

import html
import math
from typing import Any

WIDTH, HEIGHT = 600, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 24, 40  # plot margins: room for tick labels and axis titles
COLOURS = ("#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed")
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1250px;color:#111;line-height:1.4}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#047857;font-weight:bold}.fail{color:#b91c1c;font-weight:bold}.skip{color:#b45309}
.why{background:#fef2f2;border-left:4px solid #b91c1c;padding:.5rem 1rem}
.quick{background:#fffbeb;border-left:4px solid #d97706;padding:.5rem 1rem}
.charts{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0}figcaption{font-size:.85rem;color:#444}
pre{background:#f6f6f6;padding:.5rem;overflow:auto;font-size:.8rem;max-height:16rem}
section{border-top:2px solid #e5e7eb;margin-top:1.5rem}
"""
QUICK_NOTE = (
    "Quick mode: every scenario is scaled down (fewer calls, shorter phases). It gives a verdict on correctness "
    "(errors, lost data, paid-then-failed, refusals, cleanup); latency, overhead and memory figures are reported "
    "but not judged: a quick run is too small and short to judge them on a shared machine."
)


def _esc(value: object) -> str:
    return html.escape(str(value))


def _number(value: object) -> str:
    """Counts with thousands separators, never clipped; small floats to 4 significant figures."""
    if isinstance(value, bool) or value is None:
        return "none" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _ticks(top: float) -> list[float]:
    """Round tick values from 0 to just above `top`."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [round(step * i, 10) for i in range(math.ceil(top / step) + 1)]


def _line_chart(title: str, rows: list[list[float]], labels: list[str], unit: str) -> str:
    """One line per column after the first (x, seconds); y axis from 0 with round ticks and the unit."""
    if not rows:
        return ""
    xs = [row[0] for row in rows]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ticks = _ticks(max((v for row in rows for v in row[1:]), default=1.0))
    y1 = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / y1 * plot_h

    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#999"/>']
    for tick in ticks:
        y = py(tick)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{_number(tick)}</text>')
    step = _ticks(x1 - x0)[1]
    for x in [round(step * k, 10) for k in range(math.ceil(x0 / step), math.floor(x1 / step) + 1)]:
        parts.append(
            f'<text x="{px(x):.1f}" y="{TOP + plot_h + 16}" font-size="11" text-anchor="middle">{x:.0f}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">'
        "seconds since the scenario started</text>"
    )
    parts.append(
        f'<text x="12" y="{TOP + plot_h / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2})">{_esc(unit)}</text>'
    )
    for i, label in enumerate(labels):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{px(row[0]):.1f},{py(row[i + 1]):.1f}" for row in rows)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{LEFT + 8 + 70 * i}" y="16" fill="{colour}" font-size="12">■ {_esc(label)}</text>')
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">{"".join(parts)}</svg>'
    return f"<figure>{svg}<figcaption>{_esc(title)}</figcaption></figure>"


def _bar_chart(title: str, counts: dict[str, int]) -> str:
    """Horizontal bars; the full count is written beside each bar, inside the picture."""
    if not counts:
        return ""
    top = max(counts.values())
    label_w, count_w = 220, 90
    bar_room = WIDTH - label_w - count_w
    rows = []
    for i, (name, count) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])):
        width = max(1.0, count / top * bar_room)
        y = 8 + i * 24
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 13}" font-size="12" text-anchor="end">{_esc(name)[:34]}</text>'
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="18" fill="#dc2626"/>'
            f'<text x="{label_w + width + 6:.1f}" y="{y + 13}" font-size="12">{count:,}</text>'
        )
    height = 16 + 24 * len(counts)
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">{"".join(rows)}</svg>'
    return f"<figure>{svg}<figcaption>{_esc(title)}</figcaption></figure>"


def _value(value: Any) -> str:
    """A figure as HTML: a list of records becomes a table, a mapping a nested list, a number is grouped."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        head = "".join(f"<th>{_esc(c.replace('_', ' '))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td class=num>{_value(v.get(c))}</td>" for c in columns) + "</tr>" for v in value
        )
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(value, dict):
        if not value:
            return "none"
        return "; ".join(f"{_esc(k)}: {_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_esc(_number(v)) for v in value) or "none"
    return _esc(_number(value))


def _figures(figures: dict[str, Any]) -> str:
    if not figures:
        return ""
    rows = "".join(f"<tr><th>{_esc(k.replace('_', ' '))}</th><td>{_value(v)}</td></tr>" for k, v in figures.items())
    return f"<h3>Figures</h3><table>{rows}</table>"


def _verdict(s: dict[str, Any]) -> tuple[str, str]:
    if s["skipped"] and not s["checks"]:
        return "skipped", "skip"
    return ("pass", "pass") if s["passed"] else ("FAIL", "fail")


def _scenario(s: dict[str, Any], quick: bool) -> str:
    verdict, css = _verdict(s)
    checks = "".join(
        f"<tr><td>{_esc(c['name'])}</td><td>{_esc(c['required'])}</td><td>{_esc(c['measured'])}</td>"
        f"<td class={'pass' if c['passed'] else 'fail'}>{'ok' if c['passed'] else 'NO'}</td></tr>"
        for c in s["checks"]
    )
    series = s["series"]
    charts = "".join(
        (
            _line_chart("latency percentiles of successful calls", series["latency_ms"], ["p50", "p95", "p99"], "ms"),
            _line_chart("calls finished per second", series["calls_per_s"], ["calls/s"], "calls per second"),
            _line_chart("daemon resident memory", series["rss_mb"], ["RSS"], "MB"),
            _line_chart("daemon open file descriptors", series["open_fds"], ["open fds"], "descriptors"),
            _bar_chart("failed calls by error category (full counts)", series["errors_by_category"]),
        )
    )
    notes = "".join(f"<pre>{_esc(n)}</pre>" if "Traceback" in n else f"<p><i>{_esc(n)}</i></p>" for n in s["notes"])
    load = f", load average up to {s['load_average_max']}" if s.get("load_average_max") is not None else ""
    return (
        f"<section id={_esc(s['name'])}><h2>{_esc(s['name'])}: <span class={css}>{verdict}</span> "
        f"<small>({s['duration_s']:,.0f} s{load})</small></h2>"
        + ("<p class=quick>Quick run: scaled down; see the note at the top.</p>" if quick else "")
        + f"<p>{_esc(s['summary'])}</p><p><b>Pass:</b> {_esc(s['criterion'])}</p>"
        + (f"<p class=skip>{_esc(s['skipped'])}</p>" if s["skipped"] else "")
        + f"<table><tr><th>check</th><th>required</th><th>measured</th><th></th></tr>{checks}</table>"
        + _figures(s["figures"])
        + f"<div class=charts>{charts}</div>{notes}</section>"
    )


def _why(report: dict[str, Any]) -> str:
    """One line per failing check: what was required and what was measured."""
    lines = [
        f"<li><a href='#{_esc(s['name'])}'>{_esc(s['name'])}</a> — {_esc(c['name'])}: measured "
        f"{_esc(c['measured'])} (required {_esc(c['required'])})</li>"
        for s in report["scenarios"]
        for c in s["checks"]
        if not c["passed"]
    ]
    if report.get("interrupted"):
        lines.insert(0, "<li>the run was interrupted (Ctrl-C or SIGTERM) before every scenario ran</li>")
    return f"<div class=why><b>Why it failed</b><ul>{''.join(lines)}</ul></div>" if lines else ""


def _machine(report: dict[str, Any]) -> str:
    m = report["machine"]
    isolation = report.get("isolation", {})
    rows = [
        ("CPU cores", m["cpus"]),
        ("platform, Python", f"{m.get('platform', '')}, Python {m['python']}"),
        ("load average (1 min) before the run", m.get("load_average_before")),
        (
            "load average during the run",
            f"mean {_number(m.get('load_average_during_mean'))}, max {_number(m.get('load_average_during_max'))}",
        ),
        ("load average after the run", m.get("load_average_after")),
        ("target, storage", f"{report['target']}, {report['storage']}"),
        ("isolation", f"Redis database {isolation.get('redis_db')}, tenant {isolation.get('tenant')}"),
        ("started, duration", f"{report['date']}, {report['duration_s']:,.0f} s"),
    ]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_number(v))}</td></tr>" for k, v in rows)
    series = m.get("load_average_series") or []
    chart = _line_chart("machine load average over the run", series, ["load (1 min)"], "load average")
    chart = chart.replace("seconds since the scenario started", "seconds since the run started")
    return f"<h2>Machine</h2><table>{body}</table><div class=charts>{chart}</div>"


def _overview(report: dict[str, Any]) -> str:
    rows = []
    for s in report["scenarios"]:
        verdict, css = _verdict(s)
        failing = [c["name"] for c in s["checks"] if not c["passed"]]
        rows.append(
            f"<tr><td><a href='#{_esc(s['name'])}'>{_esc(s['name'])}</a></td><td class={css}>{verdict}</td>"
            f"<td class=num>{s['duration_s']:,.0f} s</td><td>{_esc(', '.join(failing) or s['skipped'] or '')}</td></tr>"
        )
    head = "<tr><th>scenario</th><th>result</th><th>time</th><th>failing checks</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: dict[str, Any]) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    head = (
        f"<h1>exai stress: <span class={'pass' if report['passed'] else 'fail'}>{verdict}</span></h1>"
        f"<p><code>{_esc(report['command'])}</code></p>"
        + (f"<p class=quick>{_esc(QUICK_NOTE)}</p>" if report["quick"] else "")
        + _why(report)
        + _overview(report)
        + _machine(report)
    )
    body = head + "".join(_scenario(s, report["quick"]) for s in report["scenarios"])
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>exai stress report</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
