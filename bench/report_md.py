"""Markdown tables from a bench JSON line (for bench/README.md and notes).

uv run --group bench python -m bench.report_md .spine/bench/last.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SYSTEMS = (("floor", "floor"), ("spine", "AI Spine"), ("celery", "Celery"))
SHAPES = (("chain", "chain"), ("fanout", "fan-out"))
UNITS = (
    "gateway",
    "auth",
    "orchestrator",
    "agent-echo",
    "registry",
    "metrics",
    "relay",
    "agent-zoe",
    "agent-eddie",
    "agent-echo-http",
    "kafka",
    "postgres",
    "redis",
    "celery-worker",
    "bench-client",
)


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(d: dict[str, Any]) -> str:
    out: list[str] = []
    m = d["machine"]
    out.append(
        f"Started {d['started_at'][:19]} UTC, {d['elapsed_s']} s; load average "
        f"{m['loadavg_start'][0]} → {m['loadavg_end'][0]}; processes outside the bench used "
        f"{m.get('other_processes_cpu_pct')} % of the {m['cores']} cores. Gateway "
        f"{d['config']['gateway']}. `*` = cut by the time budget."
    )
    out.append("")
    out.append("| latency (ms) | flow | runs | p50 | p95 | p99 | answer p50 | failed |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    for key, name in SYSTEMS:
        for shape, label in SHAPES:
            lat = d[key].get(shape, {}).get("latency")
            if not lat:
                continue
            runs = f"{lat['runs']}{'*' if lat.get('truncated_by_budget') else ''}"
            failed = str(lat.get("failed", 0))
            if lat.get("errors"):
                failed += " " + ", ".join(f"{k}×{v}" for k, v in lat["errors"].items())
            out.append(
                f"| {name} | {label} | {runs} | {_f(lat.get('p50_ms'))} | "
                f"{_f(lat.get('p95_ms'))} | {_f(lat.get('p99_ms'))} | "
                f"{_f(lat.get('accept_p50_ms'))} | {failed} |"
            )
    out.append("")
    out.append(
        "| AI Spine p50 ms | sent→started | node round trip | completed→client | answer−started |"
    )
    out.append("|---|---:|---:|---:|---:|")
    for shape, label in SHAPES:
        b = d["spine"].get(shape, {}).get("latency", {}).get("breakdown")
        if b:
            out.append(
                f"| {label} ({b['executions']} executions) | {_f(b['to_started_p50_ms'])} | "
                f"{_f(b['node_round_trip_p50_ms'])} | {_f(b['completed_to_client_p50_ms'])} | "
                f"{_f(b['answered_after_started_p50_ms'])} |"
            )
    out.append("")
    out.append(
        "| throughput | flow | completed / accepted | unfinished | lost | submit s "
        "| elapsed s | executions/s |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for key, name in SYSTEMS:
        for shape, label in SHAPES:
            t = d[key].get(shape, {}).get("throughput")
            if not t:
                continue
            lost = "?" if t["lost"] is None else str(t["lost"])
            out.append(
                f"| {name} | {label} | {t['completed']} / {t['submitted']} | "
                f"{t['unfinished_at_deadline']} | {lost} | {_f(t['submit_s'])} | "
                f"{_f(t['elapsed_s'])} | {_f(t['executions_per_s'])} |"
            )
    if d.get("skipped"):
        out.append(f"\nSkipped (time budget): {', '.join(d['skipped'])}.")
    out.append("")
    out.append("Ratios: " + ", ".join(f"`{k}` = {_f(v, 2)}" for k, v in d["ratios"].items()))
    out.append("")
    phases = [p for p in d["cpu_s"] if p != "idle"]
    short = {p: p.replace("latency", "lat").replace("throughput", "tput") for p in phases}
    out.append("| CPU s | idle % | " + " | ".join(short[p] for p in phases) + " |")
    out.append("|---|---:|" + "---:|" * len(phases))
    for unit in (*UNITS, "_other", "_machine_busy", "_wall"):
        cells = [_f(d["cpu_s"][p].get(unit)) if unit in d["cpu_s"][p] else "" for p in phases]
        if not any(cells):
            continue
        idle = d["idle_cpu_pct"].get(unit)
        label = {
            "_other": "other processes",
            "_machine_busy": "machine busy",
            "_wall": "wall s",
        }.get(unit, unit)
        out.append(f"| {label} | {_f(idle)} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("| memory MB | peak RSS (sampled) | VmHWM |")
    out.append("|---|---:|---:|")
    for unit, row in d["memory_mb"].items():
        if unit.startswith("py-spy"):
            continue
        peak = _f(row.get("rss_peak_mb"))
        if "tree_rss_peak_mb" in row:
            peak += f" (tree {_f(row['tree_rss_peak_mb'])})"
        out.append(f"| {unit} | {peak} | {_f(row.get('vmhwm_mb'))} |")
    return "\n".join(out)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else ".spine/bench/last.json")
    print(render(json.loads(path.read_text().splitlines()[-1])))


if __name__ == "__main__":
    main()
