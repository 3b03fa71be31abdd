"""Latency per sample of the exported inference path: onnxruntime vs PyTorch on the CPU.

Both run the same graph (:class:`multiflow.deploy.onnx_export.InferenceGraph`: Lite0 backbone +
flow + scoring + threshold) on one sample of V views at a time. Without ``--model`` a model of the
paper's flow size (6 blocks, hidden 64, Real-IAD graph) is built with random flow weights around
the packaged Lite0 backbone (latency does not depend on the weights' values).

    python benchmarks/bench_onnx.py                 # 5 views at 384 px (the offline default)
    python benchmarks/bench_onnx.py --quick         # 3 views at 128 px, few repetitions
    python benchmarks/bench_onnx.py --model results/run/cap
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import CpuShare, machine_line, peak_rss_mb, update_section  # noqa: E402


def build_model(folder: Path, views: int, input_size: int) -> Path:
    from multiflow.config import FeatureConfig
    from multiflow.engine.bundle import FeaturesSpec, GraphSpec, MasksSpec, ModelBundle, ThresholdSpec, save_bundle
    from multiflow.engine.factories import build_extractor
    from multiflow.flow import MultiFlow, ViewGraph

    extractor = build_extractor(FeatureConfig(backbone="lite0", input_size=input_size))
    names = [f"C{i + 1}" for i in range(views)]
    flow = MultiFlow(extractor.channels, ViewGraph.real_iad(views - 1, names=names), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    bundle = ModelBundle(
        category="bench", view_names=names, graph=GraphSpec(view_names=names, edges=flow.graph.to_dict()["edges"]),
        features=FeaturesSpec(backbone="lite0", input_size=input_size, dtype="float32", weights_digest=extractor.digest,
                              channels=extractor.channels, grid=list(extractor.feature_size()),
                              extractor=extractor.describe()),
        masks=MasksSpec(provider="none", dilation=8), threshold=ThresholdSpec(value=0.0),
    )
    save_bundle(folder, flow.eval(), bundle)
    return folder


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="trained class folder (default: a random-weight model of the paper's size)")
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=384)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="threads for both runtimes (default: torch's default)")
    ap.add_argument("--quick", action="store_true", help="3 views at 128 px, 3 repetitions")
    args = ap.parse_args(argv)
    if args.quick:
        args.views, args.input_size, args.reps = 3, 128, 3
    import onnxruntime as ort

    from multiflow.deploy.onnx_export import export_onnx, load_inference_graph

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp) / "bench", args.views, args.input_size)
        t0 = time.perf_counter()
        path = export_onnx(model_dir, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 2**20
        graph, meta = load_inference_graph(model_dir)
        v, s = len(meta["view_names"]), graph.input_size
        h, w = graph.extractor.feature_size(s)
        x = torch.rand(1, v, 3, s, s, generator=torch.Generator().manual_seed(0))
        m = torch.ones(1, v, h, w)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {"images": x.numpy(), "mask": m.numpy()}
        with torch.inference_mode():
            ref = graph(x, m)
            for _ in range(2):
                graph(x, m)
                sess.run(None, feed)
            with CpuShare() as share:
                t_torch = _time(lambda: graph(x, m), args.reps)
                t_ort = _time(lambda: sess.run(None, feed), args.reps)
        out = sess.run(None, feed)
        diff = float(np.abs(out[0] - ref[0].numpy()).max())
        scale = float(np.abs(ref[0].numpy()).max())
    med_t, med_o = statistics.median(t_torch), statistics.median(t_ort)
    cmd = "python benchmarks/bench_onnx.py" + (" --quick" if args.quick else
                                               f" --views {args.views} --input-size {args.input_size} --reps {args.reps}")
    if args.model:
        cmd += f" --model {args.model}"
    md = "\n".join([
        "## ONNX export: onnxruntime vs PyTorch (CPU, one sample per call)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_line()}; CPU share during timing: {share.share:.0%} of {share.cores} cores; "
        f"peak RSS {peak_rss_mb():.0f} MiB.",
        "",
        f"Model: {'`' + args.model + '`' if args.model else 'random flow weights, paper size (6 blocks, hidden 64)'}; "
        f"{v} views at {s}x{s} px -> {graph.extractor.channels} x {h} x {w} features (Lite0); "
        f"ONNX file {size_mb:.1f} MiB, export {export_s:.1f} s.",
        "",
        "| runtime | median ms / sample | min ms / sample | repetitions |",
        "|---|---:|---:|---:|",
        f"| PyTorch {torch.__version__} (eager, {threads} threads) | {1000 * med_t:.1f} | {1000 * min(t_torch):.1f} | {args.reps} |",
        f"| onnxruntime {ort.__version__} (CPU EP, {threads} threads) | {1000 * med_o:.1f} | {1000 * min(t_ort):.1f} | {args.reps} |",
        "",
        f"Speed-up of onnxruntime: {med_t / med_o:.2f}x (median). Largest map difference "
        f"{diff:.2e} (map scale {scale:.2f}).",
    ])
    update_section("onnx", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
