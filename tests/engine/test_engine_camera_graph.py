"""Camera graphs from configuration: the examples of docs/data-format.md, trained and tested.

The YAML snippets are read from the documentation itself, so the documented examples are the ones
that train. Data: a tiny folder-format set written here (random smooth images, a bright square as
the defect), features at 64 px, a 2-block flow, 2 epochs, masks off.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from multiflow.cli import main
from multiflow.flow.graph import build_view_graph
from multiflow.flow.io import load_flow

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-format.md"
SIZE = 64


def doc_example(tag: str) -> dict:
    """The YAML block of docs/data-format.md whose first line is ``# <tag>``."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    found = [b for b in blocks if b.splitlines()[0].strip() == f"# {tag}"]
    assert len(found) == 1, f"docs/data-format.md has {len(found)} yaml blocks tagged {tag}"
    return yaml.safe_load(found[0])


def _smooth_image(rng: np.random.Generator) -> np.ndarray:
    low = (rng.random((6, 6, 3)) * 160 + 40).astype(np.uint8)
    return np.array(Image.fromarray(low).resize((SIZE, SIZE), Image.BILINEAR))


def write_folder_data(root: Path, views: list[str], seed: int) -> None:
    """<root>/{train/good, test/good, test/spot}/<id>/<view>.png, masks for the defect views."""
    rng = np.random.default_rng(seed)
    for split, kind, n in [("train", "good", 4), ("test", "good", 2), ("test", "spot", 2)]:
        for k in range(n):
            sample = root / split / kind / f"{k:04d}"
            sample.mkdir(parents=True)
            for v, view in enumerate(views):
                img = _smooth_image(rng)
                if kind == "spot" and v == k % len(views):
                    img[20:36, 24:40] = 255
                    mask = np.zeros((SIZE, SIZE), np.uint8)
                    mask[20:36, 24:40] = 255
                    mdir = root / "masks" / split / kind / f"{k:04d}"
                    mdir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(mdir / f"{view}.png")
                Image.fromarray(img).save(sample / f"{view}.png")


def fit_and_test(tmp_path: Path, example: dict, seed: int) -> Path:
    """``multiflow fit`` and ``multiflow test`` on the example's views; returns the class folder."""
    views = example["data"]["views"]
    data = tmp_path / "part"
    write_folder_data(data, views, seed)
    cfg = tmp_path / "rig.yaml"
    cfg.write_text(yaml.safe_dump(example))
    sets = [f"data.root={data}", f"features.input_size={SIZE}", f"features.cache_dir={tmp_path / 'cache'}",
            "masks.provider=none", "model.hidden=8", "model.n_blocks=2", "model.kernel_sizes=[3,3]",
            "train.epochs=2", "train.batch_size=2", "eval.pictures=false"]
    argv = ["fit", "--config", str(cfg), "--out", str(tmp_path / "results"), "--name", "r", "--quiet"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    run_dir = tmp_path / "results" / "r"
    assert main(["test", str(run_dir), "--no-pictures", "--quiet"]) == 0
    return run_dir / "part"


def _named_undirected(graph) -> set[frozenset[str]]:
    assert graph.names is not None
    return {frozenset((graph.names[j], graph.names[i])) for j, i in graph.edges}


def _check_trained(cls_dir: Path, views: list[str], expected: set[frozenset[str]]) -> None:
    graph = load_flow(cls_dir / "model.safetensors").graph
    assert list(graph.names) == views
    assert _named_undirected(graph) == expected
    assert len(graph.edges) == 2 * len(expected)  # every undirected edge both ways, nothing else
    metrics = json.loads((cls_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["s_auroc"] <= 1.0 and 0.0 <= metrics["i_auroc"] <= 1.0


def test_three_cameras_in_a_row_train_with_exactly_the_configured_edges(tmp_path):
    example = doc_example("three-cameras")
    assert example["model"]["graph"] == "custom"
    cls_dir = fit_and_test(tmp_path, example, seed=1)
    expected = {frozenset(e) for e in example["model"]["edges"]}
    assert expected == {frozenset(("C1", "C2")), frozenset(("C2", "C3"))}
    _check_trained(cls_dir, example["data"]["views"], expected)


def test_eight_cameras_in_a_ring_train_with_exactly_the_ring(tmp_path):
    example = doc_example("eight-cameras")
    views = example["data"]["views"]
    assert len(views) == 8 and example["model"]["graph"] == "ring"
    cls_dir = fit_and_test(tmp_path, example, seed=2)
    order = example["model"]["ring_order"]
    expected = {frozenset((order[k], order[(k + 1) % 8])) for k in range(8)}
    _check_trained(cls_dir, views, expected)


def test_eight_cameras_and_a_named_top_camera():
    example = doc_example("eight-cameras-and-top")
    views, m = example["data"]["views"], example["model"]
    g = build_view_graph(m["graph"], views, top=m["top_view"])
    ring = [v for v in views if v != "top"]
    expected = {frozenset(("top", v)) for v in ring} | {frozenset((ring[k], ring[(k + 1) % 8])) for k in range(8)}
    assert _named_undirected(g) == expected and len(g.edges) == 2 * len(expected)
    # the top camera is found by name, not by position
    moved = ring[:3] + ["top"] + ring[3:]
    assert _named_undirected(build_view_graph("real_iad", moved, top="top")) == expected
