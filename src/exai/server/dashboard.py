"""The live status page: one HTML page that polls /dashboard/data (admin scope) every two seconds."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exai.app import Services

WINDOW_SECONDS = 60


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def dashboard_snapshot(services: Services) -> dict[str, Any]:
    now = time.time()
    stats = services.stats
    recent = [c for c in stats.recent_calls if c[0] >= now - WINDOW_SECONDS]
    latencies = [c[3] for c in recent]
    providers = []
    states = services.router.breaker_states()
    for name in sorted(services.router.providers):
        breakers = {model: state for (provider, model), state in states.items() if provider == name}
        errors = sum(1 for at, prov, _ in services.router.recent_errors if prov == name and at >= now - 300)
        health = "degraded" if errors or any(s != "closed" for s in breakers.values()) else "ok"
        providers.append({"name": name, "health": health, "breakers": breakers, "errors_5m": errors})
    return {
        "time": now,
        "uptime_seconds": round(stats.uptime(), 1),
        "calls_per_second": round(len(recent) / WINDOW_SECONDS, 2),
        "calls_total": sum(stats.calls.values()),
        "in_flight": stats.in_flight,
        "latency_ms": {
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "p99": _percentile(latencies, 0.99),
        },
        "errors_by_category": dict(stats.errors_since(300)),
        "providers": providers,
        "alerts": services.alerts.snapshot()["active"],
        "recent_calls": [
            {"time": t, "tool": tool, "outcome": outcome, "latency_ms": round(ms, 1)}
            for t, tool, outcome, ms in list(stats.recent_calls)[-20:]
        ][::-1],
    }


DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>EX-AI status</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;background:#0f1115;color:#e6e6e6}
h1{font-size:20px} .grid{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-bottom:16px}
.card{background:#1a1d24;border-radius:8px;padding:12px} .big{font-size:28px;font-weight:600}
table{width:100%;border-collapse:collapse} td,th{padding:4px 8px;text-align:left;border-bottom:1px solid #2a2e38}
.ok{color:#5fd38d} .bad{color:#ff6b6b} .warn{color:#ffc857} #error{color:#ff6b6b}
</style></head><body>
<h1>EX-AI MCP Server — live status</h1><div id="error"></div>
<div class="grid">
 <div class="card"><div>calls / s (1 min)</div><div class="big" id="cps">-</div></div>
 <div class="card"><div>in flight</div><div class="big" id="inflight">-</div></div>
 <div class="card"><div>latency p50 / p95 / p99 (ms)</div><div class="big" id="latency">-</div></div>
 <div class="card"><div>total calls</div><div class="big" id="total">-</div></div>
</div>
<div class="grid" style="grid-template-columns:1fr 1fr 1fr">
 <div class="card"><h3>Providers</h3><table id="providers"></table></div>
 <div class="card"><h3>Errors by category (5 min)</h3><table id="errors"></table></div>
 <div class="card"><h3>Alerts</h3><table id="alerts"></table></div>
</div>
<div class="card"><h3>Recent calls</h3><table id="calls"></table></div>
<script>
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("token")) localStorage.setItem("exai_token", params.get("token"));
const token = localStorage.getItem("exai_token") || "";
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const rows = (el, items) => { document.getElementById(el).innerHTML = items.join("") || "<tr><td>none</td></tr>"; };
async function refresh() {
  try {
    const r = await fetch("/dashboard/data", {headers: token ? {Authorization: "Bearer " + token} : {}});
    const d = await r.json();
    if (!r.ok) { document.getElementById("error").textContent = d.error ? d.error.message : r.status; return; }
    document.getElementById("error").textContent = "";
    document.getElementById("cps").textContent = d.calls_per_second;
    document.getElementById("inflight").textContent = d.in_flight;
    document.getElementById("latency").textContent = `${d.latency_ms.p50} / ${d.latency_ms.p95} / ${d.latency_ms.p99}`;
    document.getElementById("total").textContent = d.calls_total;
    rows("providers", d.providers.map(p => `<tr><td>${esc(p.name)}</td>`
      + `<td class="${p.health === "ok" ? "ok" : "warn"}">${esc(p.health)}</td>`
      + `<td>${esc(Object.entries(p.breakers).filter(([m, s]) => s !== "closed")
      .map(([m, s]) => m + ": " + s).join(", "))}</td></tr>`));
    rows("errors", Object.entries(d.errors_by_category).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`));
    rows("alerts", d.alerts.map(a => `<tr><td class="bad">${esc(a.name)}</td><td>${esc(a.summary)}</td></tr>`));
    rows("calls", d.recent_calls.map(c => `<tr><td>${new Date(c.time * 1000).toLocaleTimeString()}</td>`
      + `<td>${esc(c.tool)}</td><td class="${c.outcome === "ok" ? "ok" : "bad"}">${esc(c.outcome)}</td>`
      + `<td>${c.latency_ms} ms</td></tr>`));
  } catch (e) { document.getElementById("error").textContent = "daemon unreachable: " + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
