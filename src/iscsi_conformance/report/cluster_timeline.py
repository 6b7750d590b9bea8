"""A picture of a Cluster scenario's timeline (``evidence.extra["cluster_timeline"]``,
written by conformance/reservations/test_cluster.py): who held the reservation and
whose keys were registered, step by step, with every node's commands and the
fencing, failure and restart events (issue 13).

Theory of operation: the timeline is a list of scenarios, each with its nodes and
events in order (``kind`` command, state or event). The picture gives every event a
column, so that a burst of commands a millisecond apart stays readable next to a
two-second wait, and every node a lane. A state point (the registrations and the
reservation as one node read them) colours the lanes from its column to the next
state point: dark where the node holds the reservation, light where it is only
registered. A command is a mark on its node's lane, green for GOOD, red for
RESERVATION CONFLICT, amber otherwise; an event is a dashed line across the lanes.
Every mark carries its text as a tooltip (SVG ``<title>``), and a key table under
the picture lists the events. Standard library only; all text is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

COL = 12  # px per event column
LANE = 22  # px per node lane
LEFT = 130  # px for the lane names
TOP = 18  # px for the time labels
HOLDER, REGISTERED = "#3b6fb6", "#b9d0ee"
GOOD, CONFLICT, OTHER, EVENT = "#2e8540", "#c0392b", "#d68910", "#555"


def _status_colour(status: str | None) -> str:
    if not status:
        return OTHER
    if status.startswith("GOOD"):
        return GOOD
    if status.startswith("RESERVATION CONFLICT"):
        return CONFLICT
    return OTHER


def _lanes(scenario: dict[str, Any]) -> list[str]:
    """Node names first, in their order, then any other registrant a state names
    (a stale nexus of a restarted node, a key no node claims)."""
    lanes: list[str] = [str(n.get("name", "?")) for n in scenario.get("nodes", [])]
    for e in scenario.get("events", []):
        if e.get("kind") == "state":
            for name in [*e.get("holder", []), *e.get("registered", {})]:
                if str(name) not in lanes:
                    lanes.append(str(name))
    return lanes


def render_scenario(scenario: dict[str, Any]) -> str:
    """One scenario's timeline as an inline SVG figure with its event list."""
    events = [e for e in scenario.get("events", []) if isinstance(e, dict)]
    lanes = _lanes(scenario)
    row = {name: i for i, name in enumerate(lanes)}
    width = LEFT + COL * max(len(events), 1) + 8
    height = TOP + LANE * max(len(lanes), 1) + 4
    parts: list[str] = []
    for name, i in row.items():
        y = TOP + i * LANE
        parts.append(
            f'<text x="4" y="{y + 15}" font-size="11">{escape(name)}</text>'
            f'<line x1="{LEFT}" y1="{y + LANE - 1}" x2="{width - 8}" y2="{y + LANE - 1}" '
            f'stroke="#ddd"/>'
        )
    # state bands: from each state point to the next one (or the end)
    states = [(i, e) for i, e in enumerate(events) if e.get("kind") == "state"]
    for n, (i, st) in enumerate(states):
        end = states[n + 1][0] if n + 1 < len(states) else len(events)
        holders = {str(h) for h in st.get("holder", [])}
        registered = {str(k): v for k, v in st.get("registered", {}).items()}
        for name in set(registered) | holders:
            fill = HOLDER if name in holders else REGISTERED
            what = (
                f"{name}: holds the reservation (type {st.get('type')}), key {registered.get(name, '?')}"
                if name in holders
                else f"{name}: registered, key {registered[name]}"
            )
            x, y = LEFT + i * COL, TOP + row[name] * LANE + 4
            parts.append(
                f'<rect x="{x}" y="{y}" width="{(end - i) * COL}" height="{LANE - 9}" '
                f'fill="{fill}"><title>{escape(what)} (from +{st.get("t", 0)}s, read by '
                f"{escape(str(st.get('node')))}, PRgeneration {st.get('generation')})</title></rect>"
            )
    for i, e in enumerate(events):
        x = LEFT + i * COL + COL // 2
        text = f"+{e.get('t', 0)}s {e.get('node') or ''} {e.get('what', '')}"
        if e.get("kind") == "command" and str(e.get("node")) in row:
            y = TOP + row[str(e.get("node"))] * LANE + LANE // 2 - 1
            status = e.get("status")
            parts.append(
                f'<circle cx="{x}" cy="{y}" r="4" fill="{_status_colour(status)}" '
                f'stroke="#fff"><title>{escape(f"{text} -> {status}")}</title></circle>'
            )
        elif e.get("kind") == "event":
            parts.append(
                f'<line x1="{x}" y1="{TOP - 4}" x2="{x}" y2="{height - 4}" stroke="{EVENT}" '
                f'stroke-dasharray="3,2"><title>{escape(text)}</title></line>'
            )
        if i % 10 == 0:
            parts.append(
                f'<text x="{LEFT + i * COL}" y="11" font-size="9" fill="#777">+{e.get("t", 0)}s</text>'
            )
    title = (
        f"Scenario {scenario.get('scenario', '?')} on {scenario.get('target', '?')} "
        f"LUN {scenario.get('lun', '?')}"
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">'
        f"<title>{escape(title)}</title>{''.join(parts)}</svg>"
    )
    marks = [
        f"<li>+{e.get('t', 0)}s {escape(str(e.get('node') or '-'))}: {escape(str(e.get('what', '')))}</li>"
        for e in events
        if e.get("kind") == "event"
    ]
    facts = scenario.get("facts") or {}
    fact_text = "".join(
        f"<li><code>{escape(str(k))}</code>: {escape(str(v))}</li>"
        for k, v in sorted(facts.items())
    )
    legend = (
        f'<p class="muted">dark: holds the reservation; light: registered; dots: commands '
        f'(<span style="color:{GOOD}">GOOD</span>, <span style="color:{CONFLICT}">RESERVATION '
        f'CONFLICT</span>, <span style="color:{OTHER}">other</span>); dashed: events. Hover for '
        f"details.</p>"
    )
    return (
        f'<figure class="cluster-timeline"><figcaption>{escape(title)}</figcaption>'
        f'<div style="overflow-x:auto">{svg}</div>{legend}'
        f"<details><summary>events and facts</summary><ul>{''.join(marks)}{fact_text}</ul>"
        f"</details></figure>"
    )


def render(timeline: Any) -> str:
    """Every scenario of an ``evidence.extra["cluster_timeline"]`` value, as HTML; a
    value of another shape is shown as escaped text."""
    if not isinstance(timeline, list) or not all(isinstance(s, dict) for s in timeline):
        return f"<code>{escape(str(timeline))}</code>"
    return "".join(render_scenario(s) for s in timeline)
