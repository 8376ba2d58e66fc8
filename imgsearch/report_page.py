"""The shoppers' report as one self-contained HTML page (``imgsearch report --format html``): tables and bar
charts drawn as inline SVG, no script and nothing loaded from elsewhere, so it can be mailed or archived."""

from __future__ import annotations

from html import escape

from imgsearch.feedback import Interval, Report, VariantMeasures

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { padding: .25rem .6rem; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
.significant { font-weight: 600; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def _bars(title: str, labels: list[str], values: list[float], fmt: str = "pct") -> str:
    """A horizontal bar chart as SVG (one bar per label, scaled to the largest value)."""
    if not values:
        return ""
    top = max(values) or 1.0
    height, width, left = 18, 420, 130
    rows = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = i * height
        bar = width * value / top
        shown = _pct(value) if fmt == "pct" else f"{value:.3f}"
        rows.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="{height - 6}" fill="#3b7dd8"/>'
            f'<text x="{left + bar + 4:.1f}" y="{y + 13}">{shown}</text>'
        )
    svg_height = height * len(values)
    return (
        f"<h3>{escape(title)}</h3>"
        f'<svg role="img" aria-label="{escape(title)}" width="{left + width + 60}" height="{svg_height}">'
        + "".join(rows)
        + "</svg>"
    )


def _variant_row(m: VariantMeasures) -> str:
    name = "(all)" if m.variant is None else (m.variant or '""')
    cells = [
        escape(name),
        str(m.searches),
        str(m.impressions),
        str(m.clicks),
        _pct(m.click_through),
        _pct(m.searches_clicked),
        f"{m.mean_reciprocal_rank:.3f}",
        f"{m.add_to_cart_rate:.3f}",
        _pct(m.conversion),
        escape(str(m.revenue)),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _interval(d: Interval, scale: float) -> str:
    significant = not (d.low <= 0 <= d.high)
    text = f"{scale * d.value:+.3f} [{scale * d.low:+.3f}, {scale * d.high:+.3f}]"
    return f'<td class="significant">{text}</td>' if significant else f"<td>{text}</td>"


def render(report: Report) -> str:
    """The whole page."""
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8><title>imgsearch: what shoppers did</title>",
        f"<style>{_STYLE}</style>",
        "<h1>What shoppers did with the results</h1>",
        f"<p>Events from {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if not report.total.impressions and not report.total.clicks:
        parts.append("<p>No events in this window.</p>")
        return "\n".join(parts) + "\n"
    head = [
        "variant",
        "searches",
        "impressions",
        "clicks",
        "CTR",
        "searches clicked",
        "MRR",
        "carts / search",
        "conversion",
        "revenue",
    ]
    parts.append("<h2>By variant</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    parts += [_variant_row(m) for m in [*report.variants, report.total]]
    parts.append("</table>")
    for c in report.comparisons:
        parts.append(
            f"<h3>{escape(c.b)} against {escape(c.a)}</h3><p>Difference and 95% interval per search; bold: the "
            "interval leaves out 0.</p><table><tr><th>measure</th><th>difference</th></tr>"
            f"<tr><td>searches clicked (points)</td>{_interval(c.searches_clicked, 100)}</tr>"
            f"<tr><td>mean reciprocal rank</td>{_interval(c.mean_reciprocal_rank, 1)}</tr>"
            f"<tr><td>conversion (points)</td>{_interval(c.conversion, 100)}</tr></table>"
        )
    parts.append("<h2>By position</h2>")
    parts.append(
        _bars("Click-through rate by rank", [str(r[0]) for r in report.by_rank], [r[3] for r in report.by_rank])
    )
    parts.append("<table><tr><th>rank</th><th>impressions</th><th>clicks</th><th>CTR</th></tr>")
    parts += [f"<tr><td>{r}</td><td>{s}</td><td>{c}</td><td>{_pct(t)}</td></tr>" for r, s, c, t in report.by_rank]
    parts.append("</table><h2>By category</h2>")
    shown = report.by_category[:20]
    parts.append(_bars("Click-through rate by category", [c[0] or "(none)" for c in shown], [c[3] for c in shown]))
    parts.append("<table><tr><th>category</th><th>impressions</th><th>clicks</th><th>CTR</th><th>purchases</th></tr>")
    parts += [
        f"<tr><td>{escape(n or '(none)')}</td><td>{s}</td><td>{c}</td><td>{_pct(t)}</td><td>{b}</td></tr>"
        for n, s, c, t, b in report.by_category
    ]
    parts.append("</table>")
    return "\n".join(parts) + "\n"
