"""`saje report`: one self-contained HTML page per run, from its records (runrecord.py).

A timeline of the tasks on each node (a Gantt chart, one lane per concurrent task on a node),
the nodes over time by state, the cumulative cost, a table of the rules (tasks, runtime, peak
memory where a benchmark file measured it: Batch does not report a task's memory), the slowest
tasks and the failed ones with links to their saved logs. The charts are plotly's, with
plotly.js inlined in the page: it renders with no network, and works after the run's jobs and
pools are gone, because everything comes from the files the run wrote.
"""
from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path
from typing import Any

from . import runrecord
from .runrecord import NODE_GROUPS, RunRecord, TaskRecord, grouped

REPORT_FILE = "report.html"
SLOWEST = 10
COST_POINTS = 400
# Colours of the node state groups (the timeline's failed tasks use the "unusable" red).
# Rules' colours on the timeline: a qualitative palette without red, which marks failed tasks.
RULE_COLOURS = ("#636efa", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52")
GROUP_COLOURS = {"allocating": "#c7c7c7", "booting": "#9edae5", "idle": "#ffbb78", "running": "#2ca02c",
                 "preempted": "#9467bd", "unusable": "#d62728", "leaving": "#7f7f7f"}


def _when(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat() if t is not None else None


def lanes(tasks: list[TaskRecord]) -> dict[str, tuple[str, int]]:
    """task id -> (node id, lane): tasks that overlap in time on one node get separate lanes."""
    out: dict[str, tuple[str, int]] = {}
    ends: dict[str, list[float]] = {}
    for task in sorted(tasks, key=lambda t: (t.started or 0.0, t.task_id)):
        if task.node_id is None or task.started is None:
            continue
        node_ends = ends.setdefault(task.node_id, [])
        lane = next((i for i, end in enumerate(node_ends) if end <= task.started), len(node_ends))
        if lane == len(node_ends):
            node_ends.append(0.0)
        node_ends[lane] = task.ended if task.ended is not None else float("inf")
        out[task.task_id] = (task.node_id, lane)
    return out


def node_series(record: RunRecord) -> tuple[list[float], dict[str, list[int]]]:
    """Nodes of all pools by state group over time, from the poll samples (a step function)."""
    latest: dict[str, dict[str, int]] = {}
    times: list[float] = []
    series: dict[str, list[int]] = {group: [] for group in NODE_GROUPS}
    for sample in sorted(record.samples, key=lambda s: s.time):
        states = dict(sample.dedicated)
        for state, n in sample.spot.items():
            states[state] = states.get(state, 0) + n
        latest[sample.pool_id] = grouped(states)
        if times and sample.time == times[-1]:
            for group in NODE_GROUPS:
                series[group].pop()
            times.pop()
        times.append(sample.time)
        for group in NODE_GROUPS:
            series[group].append(sum(pool.get(group, 0) for pool in latest.values()))
    return times, {g: v for g, v in series.items() if any(v)}


def cost_series(record: RunRecord) -> tuple[list[float], list[float]]:
    """The known cost of the run over time, at most COST_POINTS points."""
    start = record.started
    end = record.ended or max([start, *(n.last_seen for n in record.nodes.values())])
    if end <= start:
        return [start], [0.0]
    step = (end - start) / (COST_POINTS - 1)
    times = [start + i * step for i in range(COST_POINTS)]
    return times, [runrecord.cost_at(record, t) for t in times]


def rule_rows(record: RunRecord) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for task in record.tasks.values():
        row = rows.setdefault(task.rule, {"rule": task.rule, "tasks": 0, "succeeded": 0, "failed": 0,
                                          "runtimes": [], "peak": None})
        row["tasks"] += 1
        row["succeeded"] += task.outcome == "succeeded"
        row["failed"] += task.outcome == "failed"
        if task.runtime is not None:
            row["runtimes"].append(task.runtime)
        if task.peak_memory_mb is not None:
            row["peak"] = max(row["peak"] or 0.0, task.peak_memory_mb)
    for row in rows.values():
        times = row.pop("runtimes")
        row.update(total=sum(times), mean=sum(times) / len(times) if times else None, max=max(times) if times else None)
    return sorted(rows.values(), key=lambda r: -r["total"])


# ----------------------------------------------------------------------------- figures
def _timeline(record: RunRecord):
    import plotly.graph_objects as go

    tasks = [t for t in record.tasks.values() if t.started is not None and t.node_id is not None]
    where = lanes(tasks)
    short = {node_id: _short_node(node_id) for node_id, _ in where.values()}
    label = {task_id: f"{short[node]} · {lane + 1}" for task_id, (node, lane) in where.items()}
    order = sorted(set(label.values()))
    rows_of: dict[str, set[str]] = {}
    for task_id, (node_id, _) in where.items():
        rows_of.setdefault(node_id, set()).add(label[task_id])
    lives = [(node, row) for node in record.nodes.values() for row in sorted(rows_of.get(node.node_id, ()))]
    ends = [node.preempted_at or node.ended or record.ended or node.last_seen for node, _ in lives]
    fig = go.Figure(go.Bar(  # each node's life in the pool, behind its tasks: one trace for all nodes
        orientation="h", y=[row for _, row in lives], base=[_when(node.allocated) for node, _ in lives],
        x=[(end - node.allocated) * 1000 for (node, _), end in zip(lives, ends)],
        customdata=[[node.node_id, node.vm_size] for node, _ in lives], marker={"color": "rgba(200,200,200,0.35)"},
        name="node in the pool", showlegend=False,
        hovertemplate="node %{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
    by_rule: dict[str, list[TaskRecord]] = {}
    for task in tasks:
        by_rule.setdefault("failed" if task.outcome == "failed" else task.rule, []).append(task)
    rules = sorted(name for name in by_rule if name != "failed")
    colours = {rule: RULE_COLOURS[i % len(RULE_COLOURS)] for i, rule in enumerate(rules)}
    colours["failed"] = GROUP_COLOURS["unusable"]
    for name, group in sorted(by_rule.items()):
        end = [t.ended if t.ended is not None else (record.ended or t.started) for t in group]
        fig.add_trace(go.Bar(
            orientation="h", name=name, meta="tasks", y=[label[t.task_id] for t in group],
            base=[_when(t.started) for t in group],
            x=[(e - t.started) * 1000 for t, e in zip(group, end)],
            customdata=[[t.task_id, t.rule, t.exit_code, round(e - t.started, 1), t.node_id] for t, e in zip(group, end)],
            marker={"color": colours[name]},
            hovertemplate="%{customdata[0]}<br>rule %{customdata[1]}, exit code %{customdata[2]}"
                          "<br>%{customdata[3]} s on %{customdata[4]}<extra></extra>"))
    fig.update_layout(barmode="overlay", height=max(260, 60 + 22 * len(order)), title="Tasks on each node",
                      xaxis={"type": "date", "title": "time (UTC)"},
                      yaxis={"categoryorder": "array", "categoryarray": order[::-1], "title": "node · lane"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 40}, legend={"title": "rule"})
    return fig


def _nodes(record: RunRecord):
    import plotly.graph_objects as go

    times, series = node_series(record)
    fig = go.Figure()
    for group, values in series.items():
        fig.add_trace(go.Scatter(x=[_when(t) for t in times], y=values, name=group, stackgroup="nodes",
                                 line={"shape": "hv", "color": GROUP_COLOURS[group]}))
    fig.update_layout(title="Nodes by state", height=300, xaxis={"type": "date", "title": "time (UTC)"},
                      yaxis={"title": "nodes", "rangemode": "tozero"}, margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


def _cost(record: RunRecord, currency: str):
    import plotly.graph_objects as go

    times, values = cost_series(record)
    fig = go.Figure(go.Scatter(x=[_when(t) for t in times], y=values, name="cost", line={"color": "#1f77b4"}))
    fig.update_layout(title=f"Cumulative estimated cost ({currency})", height=300,
                      xaxis={"type": "date", "title": "time (UTC)"}, yaxis={"title": currency, "rangemode": "tozero"},
                      margin={"l": 10, "r": 10, "t": 50, "b": 40})
    return fig


# ----------------------------------------------------------------------------- the page
def render(record: RunRecord, summary: dict[str, Any], directory: Path) -> str:
    """The whole page as a string (plotly.js inlined)."""
    from plotly.offline import get_plotlyjs

    currency = summary["cost"]["currency"]
    config = {"displaylogo": False, "responsive": True}
    figures = "\n".join(
        f'<section>{fig.to_html(full_html=False, include_plotlyjs=False, div_id=div, config=config)}</section>'
        for div, fig in (("saje-timeline", _timeline(record)), ("saje-nodes", _nodes(record)),
                         ("saje-cost", _cost(record, currency))))
    workdir = directory.resolve().parent.parent.parent  # <workdir>/.snakemake/saje_logs/<run>
    return _PAGE.format(
        title=html.escape(f"SAJE run {record.run_id}"), plotly=get_plotlyjs(), header=_header(summary),
        figures=figures, rules=_rules_table(record), slowest=_slowest(record), failed=_failed(record, workdir, directory))


def write(directory: Path) -> Path:
    """Read the run in `directory`, write its report there; the report's path."""
    record, summary = runrecord.load(directory)
    if summary is None:  # a run that ended before its summary: make one from its records
        summary = runrecord.summarize(record)
    path = directory / REPORT_FILE
    partial = directory / f".{REPORT_FILE}.partial"
    partial.write_text(render(record, summary, directory), encoding="utf-8")
    os.replace(partial, path)
    return path


def _header(summary: dict[str, Any]) -> str:
    money, tasks = summary["cost"], summary["tasks"]
    currency = money["currency"]
    total = (f"{money['total']:.4f} {currency}" if money["total"] is not None
             else f"at least {money['known']:.4f} {currency}")
    rows = [("run", summary["runId"]), ("Batch account", summary["endpoint"] + (" (local emulator)" if summary["emulated"] else "")),
            ("started", summary["started"]), ("ended", summary["ended"]), ("duration", f"{summary['durationSeconds']:.1f} s"),
            ("tasks", f"{tasks['succeeded']} succeeded, {tasks['failed']} failed, {tasks['unfinished']} unfinished"),
            ("retries", f"{summary['retries']['batch']} by Batch, {summary['retries']['snakemake']} by Snakemake"),
            ("preemptions", f"{summary['preemptions']['nodes']} node(s), {summary['preemptions']['taskRequeues']} task(s) requeued"),
            ("first task running", "-" if summary["firstRunningAfterSeconds"] is None
             else f"{summary['firstRunningAfterSeconds']:.1f} s after the first submission"),
            ("estimated cost", total),
            ("prices", money["prices"]["source"] + f", region {money['prices']['region']}, as of {money['prices']['date']}"
             + (f" ({money['prices']['note']})" if money["prices"].get("note") else "") if money.get("prices") else "-"),
            ("data moved by SAJE", f"{summary['data']['uploadedBytes']:,} bytes up, {summary['data']['downloadedBytes']:,} bytes down")]
    hours = "".join(f"<tr><td>{html.escape(r['vmSize'])}</td><td>{r['priority']}</td><td>{r['nodes']}</td>"
                    f"<td>{r['nodeHours']:.4f}</td><td>{'-' if r['pricePerHour'] is None else r['pricePerHour']}</td></tr>"
                    for r in summary["nodeHours"])
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return (f'<table class="facts">{facts}</table><h2>Node-hours</h2><table><tr><th>VM size</th><th>priority</th>'
            f"<th>nodes</th><th>node-hours</th><th>{currency}/hour</th></tr>{hours}</table>")


def _rules_table(record: RunRecord) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    body = "".join(
        f"<tr><td>{html.escape(r['rule'])}</td><td>{r['tasks']}</td><td>{r['succeeded']}</td><td>{r['failed']}</td>"
        f"<td>{fmt(r['total'])}</td><td>{fmt(r['mean'])}</td><td>{fmt(r['max'])}</td>"
        f"<td>{fmt(r['peak']) if r['peak'] is not None else 'not measured'}</td></tr>" for r in rule_rows(record))
    return ("<table><tr><th>rule</th><th>tasks</th><th>succeeded</th><th>failed</th><th>runtime total (s)</th>"
            "<th>mean (s)</th><th>max (s)</th><th>peak memory (MB)</th></tr>" + body + "</table>"
            '<p class="note">Peak memory is the max_rss of the rule\'s Snakemake benchmark file (benchmark: directive); '
            "Azure Batch does not report a task's memory.</p>")


def _slowest(record: RunRecord) -> str:
    tasks = sorted((t for t in record.tasks.values() if t.runtime is not None), key=lambda t: -(t.runtime or 0))[:SLOWEST]
    body = "".join(f"<tr><td>{html.escape(t.task_id)}</td><td>{html.escape(t.rule)}</td><td>{t.runtime:.1f}</td>"
                   f"<td>{_node_cell(t.node_id)}</td><td>{t.outcome}</td></tr>" for t in tasks)
    return "<table><tr><th>task</th><th>rule</th><th>runtime (s)</th><th>node</th><th>outcome</th></tr>" + body + "</table>"


def _failed(record: RunRecord, workdir: Path, directory: Path) -> str:
    tasks = [t for t in runrecord.task_rows(record) if t.outcome == "failed"]
    if not tasks:
        return "<p>No task failed.</p>"
    rows = []
    for t in tasks:
        links = "-"
        if t.log_dir:
            logs = workdir / t.log_dir
            links = " ".join(f'<a href="{html.escape(os.path.relpath(logs / name, directory.resolve()))}">{name}</a>'
                             for name in ("stdout.txt", "stderr.txt"))
        rows.append(f"<tr><td>{html.escape(t.task_id)}</td><td>{html.escape(t.rule)}</td><td>{t.exit_code}</td>"
                    f"<td>{html.escape(t.failure_code or '-')}</td><td>{_node_cell(t.node_id)}</td><td>{links}</td></tr>")
    return ("<table><tr><th>task</th><th>rule</th><th>exit code</th><th>Batch failure</th><th>node</th><th>logs</th></tr>"
            + "".join(rows) + "</table>")


def _node_cell(node_id: str | None) -> str:
    """A node's short id, the full one in its tooltip (what `saje` commands and Batch take)."""
    if not node_id:
        return "-"
    return f'<span title="{html.escape(node_id)}">{html.escape(_short_node(node_id))}</span>'


def _short_node(node_id: str) -> str:
    """tvmps_<64 hex>_d -> tvmps_1a2b3c…_d: enough to tell nodes apart on an axis."""
    head, _, rest = node_id.partition("_")
    digest, _, tail = rest.rpartition("_")
    return f"{head}_{digest[:8]}…_{tail}" if len(digest) > 12 else node_id


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script>{plotly}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }}
table.facts th {{ width: 12em; }}
.note {{ color: #666; font-size: 0.85em; }}
</style></head>
<body>
<h1>{title}</h1>
{header}
{figures}
<h2>Rules</h2>
{rules}
<h2>Slowest tasks</h2>
{slowest}
<h2>Failed tasks</h2>
{failed}
</body></html>
"""
