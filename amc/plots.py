"""Plain SVG charts (no plotting dependency): the fidelity scatter plot and the search's curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / max(n - 1, 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = np.ceil(lo / step - 1e-9) * step
    return [float(round(v, 10)) + 0.0 for v in np.arange(first, hi + step * 1e-6, step)]  # + 0.0: no "-0" label


class _Frame:
    """Axes of a chart: data -> pixel mapping, grid, tick labels, title and axis labels (SVG elements)."""

    left, right, top, bottom = 70, 20, 50, 60

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], width: int, height: int) -> None:
        (self.x_lo, self.x_hi), (self.y_lo, self.y_hi) = x_range, y_range
        self.width, self.height = width, height
        self.pw, self.ph = width - self.left - self.right, height - self.top - self.bottom

    def px(self, v: float) -> float:
        return self.left + (v - self.x_lo) / (self.x_hi - self.x_lo) * self.pw

    def py(self, v: float) -> float:
        return self.top + self.ph - (v - self.y_lo) / (self.y_hi - self.y_lo) * self.ph

    def open(self, title: str, x_label: str, y_label: str) -> list[str]:
        w, h, left, top, pw, ph = self.width, self.height, self.left, self.top, self.pw, self.ph
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                 f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
                 f'<rect width="{w}" height="{h}" fill="white"/>',
                 f'<text x="{w / 2:.1f}" y="24" text-anchor="middle" font-size="13">{_escape(title)}</text>']
        for t in _ticks(self.x_lo, self.x_hi):
            parts.append(f'<line x1="{self.px(t):.1f}" y1="{top}" x2="{self.px(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
            parts.append(f'<text x="{self.px(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
        for t in _ticks(self.y_lo, self.y_hi):
            parts.append(f'<line x1="{left}" y1="{self.py(t):.1f}" x2="{left + pw}" y2="{self.py(t):.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 6}" y="{self.py(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        parts.append(f'<text x="{left + pw / 2:.1f}" y="{h - 18}" text-anchor="middle">{_escape(x_label)}</text>')
        parts.append(f'<text x="18" y="{top + ph / 2:.1f}" text-anchor="middle" '
                     f'transform="rotate(-90 18 {top + ph / 2:.1f})">{_escape(y_label)}</text>')
        return parts

    def legend_y(self, k: int) -> float:
        return self.top + 16 + 18 * k


def _padded(values: np.ndarray, floor: float | None = None) -> tuple[float, float]:
    """A value range with 5% margins (at least 0.01), clipped below at ``floor``."""
    values = values[np.isfinite(values)] if np.isfinite(values).any() else np.zeros(1)
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.05 * (hi - lo), 0.01)
    return (lo - pad if floor is None else max(floor, lo - pad)), hi + pad


def scatter_svg(x: Sequence[float], series: dict[str, Sequence[float]], title: str = "", x_label: str = "",
                y_label: str = "", width: int = 720, height: int = 520, diagonal: bool = True) -> str:
    """A scatter plot of one or more ``y`` series against ``x`` as an SVG document.

    With ``diagonal`` both axes share one range and a dashed y = x guide is drawn (for a quantity against an
    estimate of it); without, each axis spans its own data.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = {name: np.asarray(v, dtype=np.float64) for name, v in series.items()}
    all_y = np.concatenate(list(ys.values())) if ys else np.zeros(1)
    if diagonal:
        lo, hi = _padded(np.concatenate([xs, all_y]) if len(xs) else np.zeros(1), floor=0.0)
        x_range = y_range = (lo, hi)
    else:
        x_range = _padded(xs if len(xs) else np.zeros(1), floor=0.0)
        y_range = _padded(all_y, floor=0.0)
    f = _Frame(x_range, y_range, width, height)
    parts = f.open(title, x_label, y_label)
    if diagonal:
        lo, hi = x_range
        parts.append(f'<line x1="{f.px(lo):.1f}" y1="{f.py(lo):.1f}" x2="{f.px(hi):.1f}" y2="{f.py(hi):.1f}" '
                     'stroke="#999" stroke-dasharray="4 4"><title>y = x</title></line>')
    for k, (name, y) in enumerate(ys.items()):
        color = COLORS[k % len(COLORS)]
        for xv, yv in zip(xs, y):
            if np.isfinite(xv) and np.isfinite(yv):
                parts.append(f'<circle cx="{f.px(xv):.1f}" cy="{f.py(yv):.1f}" r="4.5" fill="{color}" '
                             f'fill-opacity="0.75"><title>{_escape(name)}: {xv:.3f}, {yv:.3f}</title></circle>')
        ly = f.legend_y(k)
        parts.append(f'<circle cx="{f.left + 14}" cy="{ly - 4}" r="4.5" fill="{color}"/>')
        parts.append(f'<text x="{f.left + 24}" y="{ly}">{_escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def line_svg(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "", x_label: str = "",
             y_label: str = "", width: int = 720, height: int = 420) -> str:
    """A line chart of named ``(x, y)`` series as an SVG document (non-finite points are skipped)."""
    clean = {}
    for name, (x, y) in series.items():
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        keep = np.isfinite(xs) & np.isfinite(ys)
        clean[name] = (xs[keep], ys[keep])
    all_x = np.concatenate([v[0] for v in clean.values()] + [np.zeros(1)])
    all_y = np.concatenate([v[1] for v in clean.values()] + [np.zeros(0)])
    x_lo = float(all_x.min())
    f = _Frame((x_lo, max(float(all_x.max()), x_lo + 1)), _padded(all_y if len(all_y) else np.zeros(1)),
               width, height)
    parts = f.open(title, x_label, y_label)
    for k, (name, (xs, ys)) in enumerate(clean.items()):
        color = COLORS[k % len(COLORS)]
        points = " ".join(f"{f.px(a):.1f},{f.py(b):.1f}" for a, b in zip(xs, ys))
        if points:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6">'
                         f'<title>{_escape(name)}</title></polyline>')
        ly = f.legend_y(k)
        parts.append(f'<line x1="{f.left + 8}" y1="{ly - 4}" x2="{f.left + 22}" y2="{ly - 4}" stroke="{color}" '
                     f'stroke-width="2"/>')
        parts.append(f'<text x="{f.left + 28}" y="{ly}">{_escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
