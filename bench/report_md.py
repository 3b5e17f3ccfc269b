"""Markdown tables from a bench JSON line (for bench/README.md and notes).

uv run --group bench python -m bench.report_md .spine/bench/last.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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
    """Markdown for a record of ``make bench`` (version 2: rounds and a headline)."""
    out: list[str] = []
    m = d["machine"]
    h = d["headline"]
    out.append(
        f"Started {d['started_at'][:19]} UTC, {d['elapsed_s']} s, {h['rounds']} rounds; load "
        f"average {m['loadavg_start'][0]} → {m['loadavg_end'][0]}; processes outside the bench "
        f"used {m.get('other_processes_cpu_pct')} % of the {m['cores']} cores; bench client "
        f"{h.get('bench_client_cpu_s')} CPU-s. Checks: "
        + ("all passed" if h["checks"]["ok"] else f"**FAILED** {h['checks']['failures']}")
        + f"; agent re-runs {h['checks'].get('agent_reruns')}."
    )
    out.append("")
    out.append("| ratio | median | rounds |")
    out.append("|---|---:|---|")
    for name, r in h["ratios"].items():
        if r["median"] is None:
            continue
        out.append(
            f"| {name} | **{_f(r['median'], 2)}** | {' / '.join(_f(v, 2) for v in r['rounds'])} |"
        )
    out.append("")
    out.append(
        "| contestant | flow | p50 ms | p99 ms | executions/s | machine CPU-ms / execution |"
    )
    out.append("|---|---|---|---|---|---|")
    for c in h["contestants"]:
        for shape in ("chain", "fanout"):
            cells = []
            for key in ("p50_ms", "p99_ms", "throughput_per_s", "machine_cpu_ms_per_execution"):
                v = h[key].get(c, {}).get(shape)
                cells.append(
                    "–"
                    if not v
                    else f"{_f(v['median'])} ({' / '.join(_f(x) for x in v['rounds'])})"
                )
            if any(x != "–" for x in cells):
                out.append(f"| {c} | {shape} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "Cells: the median of the rounds, then each round. `not finished`: cut by the budget."
    )
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
