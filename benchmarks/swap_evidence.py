"""How should the flow's swap check be calibrated? Rules compared on the clean objects of a
``camera_faults.py`` run (issue 20 §2).

A swap of cameras ``a`` and ``b`` turns the object's evidence for that pair into its negative,
exactly: the flow's likelihood gain (:mod:`multiflow.faults.flow_swap`) and the image checks' pair
score ``log((e_aa + e_bb) / (e_ab + e_ba))`` (:func:`multiflow.faults.fit.pair_scores`) both change
sign when the two images change places. So every clean object also gives its swapped case on every
pair, and a calibration rule can be judged on many more swaps than the benchmark's fault cases.

Per class: the clean normal test objects of ``<cf>/<class>/flow_<variant>.npz`` (their gains on
every pair) and their image pair scores (computed here from the test images with the class's
camera-fault model; cached in ``<out>/<class>_pair_scores.npz``). ``--splits`` times, a random
``--calibration`` of them play the held-out calibration objects and the rest the new objects; each
rule is fitted on the calibration objects at the flow's budget (``--false-alarm``, the flow's share
of ``faults.false_alarm``) and judged on the rest:

* false alarm: share of the new clean objects with any pair flagged (target: the budget);
* detection: share of (new object, pair) swapped cases flagged on that pair, mean over pairs, and
  the worst pair.

Rules:

* ``tail max`` (the rule before this one): each pair's gain standardised by its Q90 and mean excess,
  the largest over pairs cut at the conformal / exponential-tail quantile of the cross-fitted
  maxima (:func:`multiflow.faults.fit.calibrate`), and the gain positive;
* ``gaussian`` (shipped, :func:`multiflow.faults.flow_swap.fit_flow_swap`): Gaussian gains with a
  Student-t predictive, the budget allocated over the pairs for the largest expected detection;
* ``gaussian, flow + image``: the same on a two-dimensional discriminant per pair (the direction
  ``Sigma^-1 mu`` of the calibration objects' (gain, pair score), which a swap also negates).

    python benchmarks/swap_evidence.py --cf results/trust/cf200g --data results/trust/data \\
        --classes toy_brick terminal_block --size 384
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchmarks._report import machine_line, update_section  # noqa: E402

RULES = ("tail max", "gaussian", "gaussian, flow + image")


def pair_scores(fault_model, images, n_views: int) -> np.ndarray:
    """``(P,)`` the image checks' raw pair scores of one object with every camera, pairs in
    :func:`multiflow.faults.flow_swap.all_pairs` order."""
    from multiflow.faults.fit import raw_statistics
    from multiflow.faults.stats import view_stats

    st = view_stats(images, size=fault_model.size, grid=fault_model.grid)
    raw = raw_statistics(fault_model.reference, st, range(n_views), fault_model.occlusion_cells)
    return np.array([raw["pair"][a, b] for a, b in itertools.combinations(range(n_views), 2)])


def fit_tail_max(gains: np.ndarray, false_alarm: float, folds: int = 10):
    """The earlier rule (module docstring): ``(q, b, sigma)``."""
    from multiflow.faults.fit import calibrate, tail_scales

    n = len(gains)
    fold = np.arange(n) % min(folds, n)
    s = np.empty(n)
    for k in range(fold.max() + 1):
        held = fold == k
        q, b, _, _ = tail_scales(gains[~held], 1e-3)
        s[held] = ((gains[held] - q) / b).max(axis=1)
    sigma, _ = calibrate(s, false_alarm)
    q, b, _, _ = tail_scales(gains, 1e-3)
    return q, b, sigma


def flags(rule: str, cal: np.ndarray, new: np.ndarray, false_alarm: float) -> np.ndarray:
    """``(N, P)`` bool: which pairs of the objects ``new (N, P, D)`` the rule fitted on ``cal (M, P, D)``
    flags (``D``: gain, then the image pair score)."""
    from multiflow.faults.flow_swap import cutoffs, fit_flow_swap

    if rule == "tail max":
        q, b, sigma = fit_tail_max(cal[..., 0], false_alarm)
        z = (new[..., 0] - q) / b
        return (z > sigma) & (new[..., 0] > 0)
    if rule == "gaussian":
        return new[..., 0] > cutoffs(fit_flow_swap(cal[..., 0], false_alarm))
    if rule == "gaussian, flow + image":
        mu = cal.mean(axis=0)  # (P, D)
        w = np.stack([np.linalg.solve(np.cov(cal[:, p].T) + 1e-12 * np.eye(cal.shape[2]), -mu[p])
                      for p in range(cal.shape[1])])  # the direction along which a swap is larger
        proj = lambda x: (x * w[None]).sum(axis=2)  # noqa: E731; negated by a swap, like the gains
        return proj(new) > cutoffs(fit_flow_swap(proj(cal), false_alarm))
    raise ValueError(rule)


def evaluate(x: np.ndarray, n_cal: int, splits: int, false_alarm: float, seed: int = 0) -> dict[str, dict]:
    """Per rule: false alarm and detection (module docstring) over ``splits`` random splits of the
    clean objects' evidence ``x (N, P, D)``."""
    rng = np.random.default_rng(seed)
    out = {r: {"false_alarm": [], "detection": [], "per_pair": []} for r in RULES}
    for _ in range(splits):
        perm = rng.permutation(len(x))
        cal, new = x[perm[:n_cal]], x[perm[n_cal:]]
        for r in RULES:
            out[r]["false_alarm"].append(float(flags(r, cal, new, false_alarm).any(axis=1).mean()))
            det = flags(r, cal, -new, false_alarm).mean(axis=0)  # every new object swapped on every pair
            out[r]["detection"].append(float(det.mean()))
            out[r]["per_pair"].append(det.tolist())
    return {r: {"false_alarm": float(np.mean(v["false_alarm"])), "detection": float(np.mean(v["detection"])),
                "per_pair": np.mean(v["per_pair"], axis=0).tolist()} for r, v in out.items()}


def class_evidence(cf: Path, data: Path, cls: str, size: int, variant: str, out: Path) -> tuple[np.ndarray, list[str]]:
    """``(x (N, P, 2), pair names)`` of the class's clean normal test objects."""
    from multiflow.data.realiad import RealIADDataset
    from multiflow.faults import CameraFaultModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = RealIADDataset(data, cls, split="test", image_size=size, load_masks=False)
    names = list(test.view_names)
    with np.load(cf / cls / f"flow_{variant}.npz") as z:
        ids, gains = list(z["ids"]), z["gains"]
    row = {s.sample_id: k for k, s in enumerate(test.samples)}
    normal = [k for k, sid in enumerate(ids) if not any(test.image_labels(row[sid]))]
    cache = out / f"{cls}_pair_scores.npz"
    if cache.is_file():
        with np.load(cache) as z:
            h = z["h"]
    else:
        fm_path = cf / cls / f"faults_{variant}.json"
        if not fm_path.is_file():
            fm_path = cf / cls / "runs" / variant / cls / "camera_faults.json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an older flow swap check in the file is not used here
            fm = CameraFaultModel.load(fm_path)
        h = np.stack([pair_scores(fm, test[row[ids[k]]].images, len(names)) for k in normal])
        out.mkdir(parents=True, exist_ok=True)
        np.savez(cache, h=h)
    pairs = [f"{names[a]}-{names[b]}" for a, b in itertools.combinations(range(len(names)), 2)]
    return np.stack([gains[normal], h], axis=2), pairs


def report(results: dict, args, command: str) -> str:
    lines = ["## Calibrating the flow's swap check (issue 20 §2)", "",
             f"Command: `{command}`  ", f"Machine: {machine_line()}.", "",
             f"Clean normal test objects of each class, {args.splits} random splits into {args.calibration} "
             f"calibration objects and the rest; budget {args.false_alarm:g} (the flow's share of "
             "faults.false_alarm). A swap negates the evidence exactly, so every new object is also a swap "
             "case on every pair (module docstring of `benchmarks/swap_evidence.py`).", "",
             "| class | rule | false alarm (target " + f"{100 * args.false_alarm:.1f} %) | swap detection, mean over "
             "pairs | worst pair |", "|---|---|---:|---:|---|"]
    for cls, (res, pairs) in results.items():
        for r in RULES:
            v = res[r]
            worst = int(np.argmin(v["per_pair"]))
            lines.append(f"| {cls} | {r} | {100 * v['false_alarm']:.2f} % | {100 * v['detection']:.1f} % | "
                         f"{pairs[worst]} {100 * v['per_pair'][worst]:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cf", required=True, help="a camera_faults.py results folder (flow_<variant>.npz per class)")
    p.add_argument("--data", required=True, help="the data folder it ran on")
    p.add_argument("--classes", nargs="+", required=True)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--variant", default="paper")
    p.add_argument("--calibration", type=int, default=40, help="calibration objects per split")
    p.add_argument("--splits", type=int, default=100)
    p.add_argument("--false-alarm", type=float, default=0.005, help="the flow's budget")
    p.add_argument("--out", default="results/swap_evidence")
    p.add_argument("--no-benchmarks-md", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    results = {}
    for cls in args.classes:
        x, pairs = class_evidence(Path(args.cf), Path(args.data), cls, args.size, args.variant, out)
        if len(x) <= args.calibration:
            raise SystemExit(f"{cls}: {len(x)} clean normal objects, need more than --calibration {args.calibration}")
        results[cls] = (evaluate(x, args.calibration, args.splits, args.false_alarm), pairs)
        print(f"{cls}: " + "; ".join(f"{r}: false alarm {100 * v['false_alarm']:.2f} %, detection "
                                     f"{100 * v['detection']:.1f} %" for r, v in results[cls][0].items()), flush=True)
    md = report(results, args, "python benchmarks/swap_evidence.py " + " ".join(argv or sys.argv[1:]))
    print(md)
    if not args.no_benchmarks_md:
        update_section("swap_evidence", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
