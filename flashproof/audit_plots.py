"""The audit's PNG plots: max error against L, logit scale and softmax temperature, and the ULP
histogram. Every panel says which cells it shows; a cell whose outputs are NaN or inf is drawn as
what it is (a red X for NaN, a magenta triangle for inf, above the finite errors), and an exact
cell (error 0, which a log axis cannot show) as a triangle at the bottom: none sits on a floor
that reads as a small error.
"""
from __future__ import annotations

import os

import numpy as np

from flashproof.audit_metrics import ULP_BINS

__all__ = ["series", "cell_set", "plot_all", "MARKERS", "SWEEP_PLOTS"]

#: (marker, colour, legend text) of the cells that have no finite, positive error
MARKERS = {"nan": ("X", "red", "NaN output"), "inf": ("^", "magenta", "inf output"),
           "zero": ("v", "black", "error 0 (exact)")}
#: sweep -> (file, x label, log base of the x axis)
SWEEP_PLOTS = {
    "L": ("error_vs_L.png", "sequence length L (= Lq = Lk)", 2),
    "logit_scale": ("error_vs_logit_scale.png", "logit scale s (q drawn with std s: logits ~ s)", 2),
    "temperature": ("error_vs_temperature.png", "softmax temperature T (logits divided by T)", 2),
}
_YLABEL = "max |O - exact| over the judged rows"


def _rows(rep, sweep, dtype, causal=None):
    return [r for r in rep["cells"] if r["sweep"] == sweep and r["dtype"] == dtype and r.get("metrics")
            and (causal is None or r["causal"] == causal)]


def series(rep, sweep, dtype, *, causal=None) -> dict:
    """label -> {"finite": [(x, max_abs)], "zero": [x], "nan": [x], "inf": [x]} of one panel."""
    out: dict = {}
    for r in _rows(rep, sweep, dtype, causal):
        m = r["metrics"]
        s = out.setdefault(r["target"], {"finite": [], "zero": [], "nan": [], "inf": []})
        if m["nan"]:
            s["nan"].append(r["x"])
        elif m["inf"]:
            s["inf"].append(r["x"])
        elif m["max_abs"] is None or m["max_abs"] == 0:
            s["zero"].append(r["x"])
        else:
            s["finite"].append((r["x"], m["max_abs"]))
    for s in out.values():
        s["finite"].sort()
    return out


def cell_set(rows) -> str:
    """What a panel's cells share, e.g. "E=64, B×H=1×2, non-causal, standard regime"."""
    def one(key, fmt):
        vals = sorted({r[key] for r in rows}, key=str)
        return fmt(vals[0]) if len(vals) == 1 else None
    parts = [one("E", lambda e: f"E={e}"), one("L", lambda n: f"L={n}"),
             "B×H=" + "/".join(sorted({f"{r['batch']}×{r['heads']}" for r in rows})),
             one("causal", lambda c: "causal" if c else "non-causal"), one("regime", lambda g: f"{g} regime")]
    return ", ".join(p for p in parts if p)


def _panel(ax, rep, sweep, dtype, xlabel, base, causal):
    import matplotlib.lines as mlines

    data = series(rep, sweep, dtype, causal=causal)
    finite = [y for s in data.values() for _, y in s["finite"]]
    top = 10 * max(finite) if finite else 1.0
    bottom = 0.1 * min(finite) if finite else 1e-3
    used = set()
    for label in sorted(data):
        s = data[label]
        line = None
        if s["finite"]:
            (line,) = ax.plot([x for x, _ in s["finite"]], [y for _, y in s["finite"]], marker="o", label=label)
        for kind, y in (("nan", top), ("inf", top), ("zero", bottom)):
            if s[kind]:
                marker, colour, _ = MARKERS[kind]
                ax.plot(s[kind], [y] * len(s[kind]), linestyle="none", marker=marker, markersize=9,
                        color=colour if kind != "zero" else (line.get_color() if line else colour),
                        label=f"{label}: {MARKERS[kind][2]}")
                for x in s[kind]:
                    ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
                used.add(kind)
    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    rows = _rows(rep, sweep, dtype, causal)
    ax.set_title(f"{dtype}: {sweep.replace('_', ' ')} sweep\n{cell_set(rows)}", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_YLABEL)
    extra = [mlines.Line2D([], [], linestyle="none", marker=MARKERS[k][0], color=MARKERS[k][1], label=MARKERS[k][2])
             for k in ("nan", "inf", "zero") if k in used]
    handles = [h for h in ax.get_legend_handles_labels()[0] if not str(h.get_label()).endswith(
        tuple(f": {MARKERS[k][2]}" for k in MARKERS))]
    ax.legend(handles=handles + extra, fontsize=7)


def plot_all(rep, out_dir) -> list:
    """Write the plots into ``out_dir``; returns their file names ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    dts = sorted({r["dtype"] for r in rep["cells"] if r.get("metrics")})
    if not dts:
        return []
    for sweep, (fname, xlabel, base) in SWEEP_PLOTS.items():
        if not any(_rows(rep, sweep, dt) for dt in dts):
            continue
        causal = False if sweep == "L" else None  # the L sweep runs both: the plot shows the non-causal cells
        fig, axes = plt.subplots(1, len(dts), figsize=(5.5 * len(dts), 4.5), squeeze=False)
        for ax, dt in zip(axes[0], dts):
            _panel(ax, rep, sweep, dt, xlabel, base, causal)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=90)
        plt.close(fig)
        files.append(fname)
    if any(_rows(rep, "L", dt) for dt in dts):
        fig, axes = plt.subplots(1, len(dts), figsize=(5.5 * len(dts), 4.5), squeeze=False)
        labels = [f"<{b:g}" for b in ULP_BINS[1:]]
        for ax, dt in zip(axes[0], dts):
            rows = _rows(rep, "L", dt)
            names = sorted({r["label"] for r in rows})
            width = 0.8 / max(1, len(names))
            for n, name in enumerate(names):
                tot = np.sum([r["metrics"]["ulp_hist"] for r in rows if r["label"] == name], axis=0)
                ax.bar(np.arange(len(labels)) + n * width, tot / max(1, tot.sum()), width=width, label=name)
            ax.set_xticks(np.arange(len(labels)) + 0.4)
            ax.set_xticklabels(labels, rotation=45, fontsize=7)
            ax.set_title(f"{dt}: L sweep (causal and non-causal)\n{cell_set(rows)}", fontsize=9)
            ax.set_xlabel("|O - exact| in ULPs of the output dtype (flashproof.ulp.ulp_error)")
            ax.set_ylabel("fraction of finite outputs")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "ulp_histogram.png"), dpi=90)
        plt.close(fig)
        files.append("ulp_histogram.png")
    return files
