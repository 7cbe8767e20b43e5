"""A dependency-free SVG line chart of the edit metrics over a stream (checkpoints of the train report):
rendered by browsers, the Prefect UI's image artifacts and GitHub alike; and the same chart as self-contained
Markdown (the SVG inline as a data: URI, its numbers as a table) for an artifact that outlives any link."""
from __future__ import annotations

import base64
from html import escape

COLORS = {"SR": "#1f77b4", "GR": "#ff7f0e", "ER": "#2ca02c", "TrainR": "#d62728", "TestR": "#9467bd"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def metrics_svg(points: list[dict], title: str, x: str = "records", series=tuple(COLORS),
                width: int = 640, height: int = 320) -> str:
    """Lines for each metric in `series` against `x`; the y axis spans 0 to the largest value (at least 1)."""
    left, right, top, bottom = 48, 110, 32, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [p[x] for p in points] or [0]
    x_max = max(max(xs), 1)
    y_max = max([1.0] + [p[s] for p in points for s in series if p.get(s) is not None])

    def sx(v):
        return left + plot_w * v / x_max

    def sy(v):
        return top + plot_h * (1 - v / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = sy(tick * y_max)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick * y_max:.2f}</text>')
    for v in sorted(set(xs)):
        out.append(f'<text x="{sx(v):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{v}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">{escape(x)}</text>')
    for i, name in enumerate(series):
        pts = [(sx(p[x]), sy(p[name])) for p in points if p.get(name) is not None]
        color = COLORS.get(name, PALETTE[i % len(PALETTE)])
        if pts:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{color}"/>' for a, b in pts]
        y = top + 14 * i + 6
        out.append(f'<line x1="{width - right + 12}" y1="{y}" x2="{width - right + 30}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2"/><text x="{width - right + 36}" y="{y + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def metrics_markdown(points: list[dict], title: str, x: str = "records", series=tuple(COLORS)) -> str:
    """The chart as Markdown that needs nothing else: the SVG embedded (a data: URI, which the Prefect UI's
    Markdown renders for images) above its numbers as a table, which reads where images do not."""
    svg = base64.b64encode(metrics_svg(points, title, x, series).encode()).decode()
    shown = [s for s in series if any(p.get(s) is not None for p in points)]
    extra = [k for k in ("edits", "neurons") if any(k in p for p in points)]
    columns = [x, *extra, *shown]
    rows = ["| " + " | ".join(_number(p.get(c)) for c in columns) + " |" for p in points]
    alt = title.replace("[", "(").replace("]", ")")
    return "\n".join([f"![{alt}](data:image/svg+xml;base64,{svg})", "",
                      "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]) + "\n"


def _number(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
