"""The learning curve's report: the BENCHMARKS.md section (table, verdicts, diagnosis, scoring
switches) and the plot, from the cells' records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import paper_experiments as pe
from benchmarks.lib.curve_plan import CROSS_VIEW_DEFECTS, DATA_SEED, FUSION_METHODS, METHODS, METRICS
from multiflow._atomic import write_bytes


def complete_seeds(recs: list[dict[str, Any]], classes: list[str]) -> tuple[list[dict[str, Any]], int]:
    """The records of every (method, N, seed) that has all ``classes``, and how many were left out.

    Numbers are class averages per seed: a seed that has run one class of a (method, N) only
    (an interrupted run) would enter the mean as that class alone, so it waits until complete."""
    have: dict[tuple, set] = {}
    for r in recs:
        have.setdefault((r["method"], r["n"], r["seed"]), set()).add(r["class"])
    full = {k for k, v in have.items() if set(classes) <= v}
    kept = [r for r in recs if (r["method"], r["n"], r["seed"]) in full]
    return kept, len(recs) - len(kept)


def _as_pe_records(recs: list[dict[str, Any]], key: str | None = None) -> dict:
    """``{"<method>@<N>": {seed: {class: record}}}`` in the layout of paper_experiments.collect."""
    rows = []
    for r in recs:
        src = r if key is None else r.get(key)
        if src is None:
            continue
        rows.append({"variant": f"{r['method']}@{r['n']}", "seed": r["seed"], "category": r["class"],
                     "metrics": src["metrics"]})
    return pe.collect(rows)


def plot(recs: list[dict[str, Any]], methods: list[str], path: Path) -> None:
    """S-AUROC and I-AUROC vs N (log x axis), mean ± std over seeds, one line per method."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _as_pe_records(recs)
    sizes = sorted({r["n"] for r in recs})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, label) in zip(axes, METRICS):
        for m in methods:
            xs, ys, es = [], [], []
            for n in sizes:
                key = f"{m}@{n}"
                if key not in data:
                    continue
                vals = [100 * v for v in pe.seed_means(data[key], metric) if v is not None]
                if vals:
                    mu, sd = pe.mean_std(vals)
                    xs.append(n)
                    ys.append(mu)
                    es.append(sd)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=METHODS[m].label)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()  # the log axis' minor labels (2x10^1, ...) would overprint the sizes
        ax.set_xlabel("normal training objects per class (N)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curve: class-averaged AUROC, mean ± std over seeds")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def scoring_section(recs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Issue 12's post-hoc scoring switches on the learning-curve models: every image score x
    calibration against the paper's ``max+none`` of the same models, at the largest N and averaged
    over all N (rows: switches; columns: methods)."""
    from benchmarks.scoring_ablation import CALIBRATIONS, IMAGE_SCORES, combo_name

    have = [r for r in recs if r.get("scoring")]
    if not have:
        return []
    ref = combo_name("max", "none")
    combos = [combo_name(lbl, c) for lbl, _, _ in IMAGE_SCORES for c in CALIBRATIONS]
    methods = [m for m in methods if any(r["method"] == m for r in have)]
    n_max = max(r["n"] for r in have)

    def cell(rs: list[dict[str, Any]], combo: str, with_value: bool) -> str:
        rs = [r for r in rs if combo in r["scoring"]]
        if not rs:
            return "-"
        parts = []
        for k in ("s_auroc", "i_auroc"):
            a = float(np.mean([r["scoring"][combo]["metrics"][k] for r in rs]))
            b = float(np.mean([r["scoring"][ref]["metrics"][k] for r in rs]))
            parts.append((f"{100 * a:.1f} " if with_value else "") + f"({100 * (a - b):+.1f})")
        return " / ".join(parts)

    head = ["| image score + calibration | " + " | ".join(METHODS[m].label for m in methods) + " |",
            "|---|" + "---:|" * len(methods)]
    lines = ["#### Scoring switches on these models (issue 12)", "",
             "Image score x per-view calibration, post hoc on each cell's stored maps (`--rescore` recomputes them); "
             "calibrations are fitted on the cell's held-out normal objects, so only flows trained on whole objects "
             "have them. S-AUROC / I-AUROC (%), class average, in brackets the difference to `max+none` of the same "
             f"models (pp). At N = {n_max}:", "", *head]
    for c in combos:
        lines.append(f"| {c} | " + " | ".join(cell([r for r in have if r["method"] == m and r["n"] == n_max], c, True)
                                             for m in methods) + " |")
    sizes = sorted({r["n"] for r in have})
    lines += ["", f"Difference to `max+none` (pp, S / I), averaged over N = {sizes}:", "", *head]
    for c in combos:
        lines.append(f"| {c} | " + " | ".join(cell([r for r in have if r["method"] == m], c, False) for m in methods)
                     + " |")
    return lines + [""]


def _n_seeds(data: dict, a: str, b: str, metric: str) -> int:
    """How many seeds both rows have: with one, a difference has no noise estimate."""
    return min(len(pe.seed_means(data[a], metric)), len(pe.seed_means(data[b], metric)))


def _schedule_text(grid: dict[str, Any]) -> str:
    """The learning-rate schedule of the grid's flows in words (``train.lr_schedule`` etc.)."""
    kind = grid.get("lr_schedule", "constant")
    parts = [kind if kind == "constant" else f"cosine to {grid.get('lr_min', 0.0):g}"]
    if grid.get("warmup_epochs"):
        parts.append(f"after {grid['warmup_epochs']:g} warm-up epochs")
    if grid.get("gamma_lr"):
        parts.append(f"fusion gates at lr {grid['gamma_lr']:g}")
    return ", ".join(parts)


def report(recs: list[dict[str, Any]], grid: dict[str, Any], ctx: dict[str, Any]) -> str:
    """The BENCHMARKS.md section: table, verdicts, diagnosis, command, cost."""
    data = _as_pe_records(recs)
    off = _as_pe_records(recs, "cross_view_off")
    sizes = sorted({r["n"] for r in recs})
    methods = [m for m in grid["methods"] if any(r["method"] == m for r in recs)]
    lines = ["### Learning curve: when do the cross-view links pay off?", ""]
    if ctx.get("quick"):
        lines += ["**Quick check (`--quick`): far too small for conclusions; rerun without it.**", ""]
    if ctx["missing"]:
        lines += [f"**Incomplete: {ctx['missing']} of {ctx['total']} cells not run yet (rerun the command to "
                  "continue).**", ""]
    if ctx.get("partial"):
        lines += [f"{ctx['partial']} finished cells of seeds that have not run every class yet are left out.", ""]
    lines += ["| method | N | optimiser steps | " + " | ".join(lbl for _, lbl in METRICS) + " | mean abs gamma | s / cell |",
              "|---|---:|---:|" + "---:|" * (len(METRICS) + 2)]
    for m in methods:
        for n in sizes:
            key = f"{m}@{n}"
            if key not in data:
                continue
            cell = [r for r in recs if r["method"] == m and r["n"] == n]
            steps = sorted({r["steps"] for r in cell if r.get("steps")})
            steps_txt = f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else (str(steps[0]) if steps else "-")
            gam = [float(np.mean(r["gamma_abs"]["per_view_mean"])) for r in cell if r.get("gamma_abs")]
            gam_txt = f"{np.mean(gam):.3f}" if gam else "-"
            secs = sum(r["seconds"] for r in cell) / len(cell)
            lines.append(f"| {METHODS[m].label} | {n} | {steps_txt} | "
                         + " | ".join(pe.fmt_ms(pe.seed_means(data[key], k)) for k, _ in METRICS)
                         + f" | {gam_txt} | {secs:.0f} |")
    lines.append("")
    # verdicts: Multi-Flow minus each single-view flow / no links, per N
    verdicts = []
    pairs = [("multiflow", o) for o in ("single-view", "single-view-eqsteps", "graph-none")]
    pairs += [(f, o) for f in FUSION_METHODS for o in ("multiflow", "graph-none")]  # each operator vs conv, no links
    for mine, other in pairs:
        for n in sizes:
            a, b = f"{mine}@{n}", f"{other}@{n}"
            if a not in data or b not in data:
                continue
            parts = []
            for k, lbl in METRICS:
                d = pe.seed_delta(data, b, a, k)
                if d is None:
                    continue
                delta, spread = d
                name = "Multi-Flow" if mine == "multiflow" else METHODS[mine].label
                word = ("one seed: no noise estimate" if _n_seeds(data, a, b, k) < 2 else "within one seed std" if abs(delta) <= spread
                        else f"{name} better" if delta > 0 else f"{name} worse")
                parts.append(f"{lbl} {delta:+.2f} pp ({word})")
            if parts:
                verdicts.append(f"- N = {n}, {name} minus {METHODS[other].label}: " + ", ".join(parts))
    if verdicts:
        lines += ["Multi-Flow (and each other fusion operator) minus the other flows (mean over seeds of the class average; 'within one seed "
                  "std' when the difference is not larger than the larger of the two seed stds):", "", *verdicts, ""]
    # diagnosis at the largest N
    n_max = sizes[-1] if sizes else None
    if n_max is not None and f"multiflow@{n_max}" in data:
        lines += [f"#### Diagnosis at N = {n_max}", ""]
        sv = f"single-view@{n_max}"
        win = None
        if sv in data:
            d = pe.seed_delta(data, sv, f"multiflow@{n_max}", "s_auroc")
            win = d is not None and _n_seeds(data, sv, f"multiflow@{n_max}", "s_auroc") > 1 and d[0] > d[1]
        lines.append("Multi-Flow " + ("beats" if win else "does not clearly beat") + " the single-view flow here "
                     "(S-AUROC, beyond the seed spread). Measurements:")
        lines.append("")
        mf = [r for r in recs if r["method"] == "multiflow" and r["n"] == n_max and r.get("gamma_abs")]
        if mf:
            per_view = np.mean([r["gamma_abs"]["per_view_mean"] for r in mf], axis=0)
            lo = min(r["gamma_abs"]["min"] for r in mf)
            hi = max(r["gamma_abs"]["max"] for r in mf)
            steps = sorted({r.get("steps_selected", r["steps"]) for r in mf})
            lr = mf[0].get("gamma_lr") or mf[0].get("lr")
            lines.append(f"- learned |gamma| of Multi-Flow's st-networks (selected weights; mean over blocks and runs) "
                         f"per view {', '.join(f'{v}: {g:.3f}' for v, g in zip(ctx['views'], per_view))}; range "
                         f"{lo:.3f}-{hi:.3f} after {steps[0]}-{steps[-1]} optimiser steps at the gates' lr {lr} "
                         f"(steps x lr = {steps[-1] * lr:.2f}: Adam moves gamma by about its lr per step).")
        last = []
        for m in methods:
            runs = [r for r in recs if r["method"] == m and r.get("best_epoch") and r.get("epochs")]
            if runs:
                last.append(f"{METHODS[m].label} {sum(r['best_epoch'] >= r['epochs'] for r in runs)} of {len(runs)}")
        if last:
            lines.append("- training length: runs (all N) whose best held-out epoch is their last one, i.e. whose "
                         "held-out loss was still falling when the schedule ended: " + "; ".join(last) + ".")
        stopped = [f"{METHODS[m].label} {sum(bool(r.get('stop_reason')) for r in runs)} of {len(runs)}"
                   for m in methods if (runs := [r for r in recs if r["method"] == m and "stop_reason" in r])]
        if stopped and grid.get("patience"):
            lines.append(f"- early stopping (patience {grid['patience']}, cap {grid['epochs']} epochs) ended: "
                         + "; ".join(stopped) + " runs (all N) before the cap.")
        key = f"multiflow@{n_max}"
        if key in off:
            parts = []
            for k, lbl in METRICS:
                d = pe.seed_delta({"on": data[key], "off": off[key]}, "off", "on", k)
                if d is not None:
                    parts.append(f"{lbl} {pe.fmt_ms(pe.seed_means(off[key], k))} with the messages off vs "
                                 f"{pe.fmt_ms(pe.seed_means(data[key], k))} on ({d[0]:+.2f} pp from the links)")
            lines.append("- cross-view messages switched off at test time (same trained Multi-Flow): " + "; ".join(parts) + ".")
        defects = sorted({dd for r in recs if r["n"] == n_max for dd in r.get("per_defect", {})})
        cross = [dd for dd in defects if dd in CROSS_VIEW_DEFECTS]
        lines += ["", "Per defect type at N = " + f"{n_max} (S-AUROC, mean over seeds of the class average, %; "
                  "cross-view only, each view alone a normal image: FM = face colour mismatch, ML = mixed lot, "
                  "LB = one-sided label; CI = colour inconsistency"
                  + (f"; 'cross-view' = the mean over {', '.join(cross)}" if cross else "") + "):", ""]
        columns = [*defects, *(["cross-view"] if cross else [])]
        lines += ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        for m in methods:
            cells = []
            for col in columns:
                kinds = cross if col == "cross-view" else [col]
                per_seed = []
                for s in sorted({r["seed"] for r in recs}):
                    vals = [r["per_defect"][dd]["s_auroc"] for r in recs if r["method"] == m and r["n"] == n_max
                            and r["seed"] == s for dd in kinds if dd in r.get("per_defect", {})
                            and r["per_defect"][dd]["s_auroc"] is not None]
                    if vals:
                        per_seed.append(sum(vals) / len(vals))
                cells.append(pe.fmt_ms(per_seed) if per_seed else "-")
            lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += scoring_section(recs, methods)
    lines += [
        f"![learning curve]({ctx['plot']})", "",
        f"Command: `{ctx['command']}`  ",
        f"Data: synthetic (multiflow.synth, seed {DATA_SEED}, variation {grid['variation']}: production lots + "
        f"pose jitter), classes {grid['classes']}; train sets N = {sorted(grid['sizes'])} are nested subsets of "
        f"one set of {max(grid['sizes'])} normal objects; one shared test set of {grid['n_test_good']} normal + "
        f"{grid['n_test_defect']} defective objects per class (defects {', '.join(grid['defects'])}); 5 views at "
        f"{grid['size']} px; lite0 at {grid['input_size']} px ({ctx['grid']} feature maps); ground-truth "
        f"silhouette masks; flow {' '.join(grid.get('model') or []) or 'as in the paper (6 blocks, hidden 64)'}; "
        + (f"up to {grid['epochs']} epochs (early stopping, patience {grid['patience']}), " if grid.get("patience")
           else f"{grid['epochs']} epochs, ") + f"batch {grid['batch']} (single-view: images; equal steps: "
        f"batch x 5), lr {grid['lr']} ({_schedule_text(grid)}), best epoch on 10 % held-out normal objects. Numbers: mean ± sample "
        f"std over seeds {grid['seeds']} of the class average (%).  ",
        f"Machine: {ctx['machine']}.  ",
        f"Cost: {ctx['cells']} cells, {ctx['cell_hours']:.2f} h of cell time (CPU share {ctx['cpu_share']:.2f}) "
        f"+ {ctx['prep_min']:.1f} min data generation and feature extraction (measured in the run that "
        f"did them); peak RSS {ctx['rss']:.0f} MiB.",
    ]
    return "\n".join(lines)
