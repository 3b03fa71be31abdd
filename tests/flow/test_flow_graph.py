import json

import pytest

from multiflow.errors import ConfigError
from multiflow.flow.graph import ViewGraph


def _undirected(g):
    return {frozenset(e) for e in g.edges}


def _has_edge(g, j, i):
    """Whether ``j -> i`` is an edge of ``g``."""
    return (j, i) in g.edges


def test_real_iad_layout():
    g = ViewGraph.real_iad()
    assert g.n_views == 5 and g.names == ("C1", "C2", "C3", "C4", "C5")
    for s in range(1, 5):
        assert _has_edge(g, 0, s) and _has_edge(g, s, 0)
    assert set(g.neighbours(0)) == {1, 2, 3, 4}
    assert set(g.neighbours(1)) == {0, 2, 4}
    # opposite side views are not linked
    assert not _has_edge(g, 1, 3) and not _has_edge(g, 2, 4)
    assert len(g.edges) == 16


def test_real_iad_ring_order_and_ablations():
    g = ViewGraph.real_iad(ring_order=[1, 3, 2, 4])
    assert set(g.neighbours(1)) == {0, 3, 4}
    assert not _has_edge(g, 1, 2)
    assert ViewGraph.real_iad(top=False).neighbours(0) == ()
    assert set(ViewGraph.real_iad(neighbours=False).neighbours(2)) == {0}
    assert ViewGraph.real_iad(top=False, neighbours=False).edges == ()
    with pytest.raises(ConfigError):
        ViewGraph.real_iad(ring_order=[1, 2, 2, 4])


def test_generic_constructors():
    assert len(ViewGraph.ring(6).edges) == 12
    assert set(ViewGraph.ring(6).neighbours(0)) == {1, 5}
    assert ViewGraph.ring(2).edges == ((0, 1), (1, 0))
    assert ViewGraph.none(3).edges == ()
    assert len(ViewGraph.full(12).edges) == 12 * 11
    t = ViewGraph.top_only(4)
    assert set(t.neighbours(0)) == {1, 2, 3} and t.neighbours(2) == (0,)
    d = ViewGraph.from_edges(3, [(0, 1), (1, 2)])
    assert d.neighbours(1) == (0,) and d.neighbours(0) == ()


def test_invalid_graphs():
    with pytest.raises(ConfigError):
        ViewGraph(0)
    with pytest.raises(ConfigError):
        ViewGraph.from_edges(3, [(1, 1)])
    with pytest.raises(ConfigError):
        ViewGraph.from_edges(3, [(0, 3)])
    with pytest.raises(ConfigError):
        ViewGraph(2, names=["a", "a"])
    with pytest.raises(ConfigError):
        ViewGraph.from_dict({"edges": []})
    with pytest.raises(ConfigError):
        ViewGraph.from_dict({"n_views": 3, "edges": [[0, "x"]]})


def _is_automorphism(g, sigma):
    edges = set(g.edges)
    return sorted(sigma) == list(range(g.n_views)) and all(
        ((sigma[j], sigma[i]) in edges) == ((j, i) in edges)
        for j in range(g.n_views) for i in range(g.n_views) if i != j
    )


@pytest.mark.parametrize(
    "graph, count",
    [
        (ViewGraph.real_iad(), 8),  # dihedral group of the side ring, top fixed
        (ViewGraph.ring(5), 10),
        (ViewGraph.full(4), 24),
        (ViewGraph.none(3), 6),
        (ViewGraph.top_only(4), 6),
        (ViewGraph.from_edges(3, [(0, 1), (1, 2)]), 1),
    ],
)
def test_automorphisms(graph, count):
    autos = graph.automorphisms()
    assert len(autos) == count == len(set(autos))
    assert tuple(range(graph.n_views)) in autos
    assert all(_is_automorphism(graph, s) for s in autos)


def test_orbits():
    g = ViewGraph.real_iad()
    assert g.view_orbits() == [0, 1, 1, 1, 1]
    eo = g.edge_orbits()
    assert len(set(eo.values())) == 3  # top->side, side->top, side->side
    assert eo[(1, 2)] == eo[(2, 1)] == eo[(4, 1)] != eo[(0, 1)] != eo[(1, 0)]
    path = ViewGraph.from_edges(3, [(0, 1), (1, 2)])
    assert path.view_orbits() == [0, 1, 2]


def test_reachable():
    g = ViewGraph.from_edges(4, [(0, 1), (1, 2), (2, 3)])
    assert g.reachable_from(3, 0) == {3}
    assert g.reachable_from(3, 2) == {1, 2, 3}
    assert g.reachable_from(0, 5) == {0}


def test_dict_round_trip():
    for g in [ViewGraph.real_iad(ring_order=[2, 1, 3, 4]), ViewGraph.none(2), ViewGraph.full(3, names="abc")]:
        back = ViewGraph.from_dict(json.loads(json.dumps(g.to_dict())))
        assert back == g and back.edges == g.edges and back.names == g.names


# ---------------------------------------------------------------------- graphs from configuration
from multiflow.flow.graph import GRAPH_CHOICES, GRAPH_PRESETS, build_view_graph  # noqa: E402

REAL_IAD_VIEWS = ["C1", "C2", "C3", "C4", "C5"]


@pytest.mark.parametrize("preset", GRAPH_PRESETS)
def test_presets_match_the_hand_built_real_iad_graphs(preset):
    """With Real-IAD's names the presets are the paper's graphs (Fig. 4, Tab. 2), top camera C1."""
    expected = {
        "real_iad": ViewGraph.real_iad(4, ring_order=[1, 3, 2, 4]),
        "top_only": ViewGraph.real_iad(4, ring_order=[1, 3, 2, 4], neighbours=False),
        "ring": ViewGraph.real_iad(4, ring_order=[1, 3, 2, 4], top=False),
        "none": ViewGraph.none(5, names=REAL_IAD_VIEWS),
        "full": ViewGraph.full(5, names=REAL_IAD_VIEWS),
    }[preset]
    assert build_view_graph(preset, REAL_IAD_VIEWS, ring_order=[1, 3, 2, 4]) == expected
    # ring order by name gives the same graph as by position
    assert build_view_graph(preset, REAL_IAD_VIEWS, ring_order=["C2", "C4", "C3", "C5"]) == expected


def test_top_view_is_found_by_name_not_position():
    views = ["C3", "C1", "C2", "C4", "C5"]
    g = build_view_graph("top_only", views, top="C1")
    assert _undirected(g) == {frozenset((1, s)) for s in (0, 2, 3, 4)}
    with pytest.raises(ConfigError, match=r"top view 'C9' is not among the views"):
        build_view_graph("real_iad", views, top="C9")
    # position 0 is not C1 or top: which camera is on top cannot be told
    with pytest.raises(ConfigError, match="needs the top camera: name it with model.top_view"):
        build_view_graph("real_iad", views)
    with pytest.raises(ConfigError, match="model.top_view"):
        build_view_graph("top_only", ["left", "right", "back"])
    # unambiguous fallbacks: a first view called top, or two views (same graph either way)
    assert build_view_graph("top_only", ["top", "a", "b"]).neighbours(0) == (1, 2)
    assert build_view_graph("real_iad", ["a", "b"]).edges == ((0, 1), (1, 0))
    # ring without a top camera: all views in one ring; with one: the top camera has no links
    assert _undirected(build_view_graph("ring", ["a", "b", "c", "d"])) == {
        frozenset(p) for p in [(0, 1), (1, 2), (2, 3), (3, 0)]
    }
    assert build_view_graph("ring", ["a", "b", "c", "d"], top="b").neighbours(1) == ()


def test_custom_edges_are_undirected_and_exact():
    g = build_view_graph("custom", ["C1", "C2", "C3"], edges=[["C1", "C2"], ["C3", "C2"]])
    assert g.edges == ((0, 1), (1, 0), (1, 2), (2, 1)) and g.names == ("C1", "C2", "C3")
    assert ViewGraph.from_named_edges(["a", "b"], [("b", "a")]) == ViewGraph.full(2, names=["a", "b"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(preset="custom", edges=[["C1", "C9"]]), r"names unknown view 'C9'; the views are \['C1', 'C2', 'C3'\]"),
        (dict(preset="custom", edges=[["C1", "C2"], ["C2", "C2"]]), r"\[C2, C2\] is a self-loop"),
        (dict(preset="custom", edges=[["C1", "C2"], ["C2", "C3"], ["C2", "C1"]]),
         r"\[C2, C1\] is given twice \(first as \[C1, C2\]\)"),
        (dict(preset="custom", edges=[["C1", "C2"]]), r"views \['C3'\] are not connected to views \['C1', 'C2'\]"),
        (dict(preset="custom", edges=[]), "'custom' needs edges"),
        (dict(preset="custom", edges=[["C1"]]), "is not a pair"),
        (dict(preset="real_iad", edges=[["C1", "C2"]]), "edges are only used with graph 'custom'"),
        (dict(preset="star", edges=None), "must be one of"),
        (dict(preset="real_iad", ring_order=["C2", "C2"]), r"ring_order .* exactly once \(not the top view C1\)"),
        (dict(preset="ring", ring_order=["C2", "C9"]), "ring_order names unknown view 'C9'"),
    ],
)
def test_bad_graph_configurations_name_the_problem(kwargs, match):
    preset = kwargs.pop("preset")
    with pytest.raises(ConfigError, match=match):
        build_view_graph(preset, ["C1", "C2", "C3"], **kwargs)


def test_disconnected_report_lists_every_stray_view():
    views = ["a", "b", "c", "d", "e"]
    with pytest.raises(ConfigError, match=r"views \['d', 'e'\] are not connected to views \['a', 'b', 'c'\]"):
        build_view_graph("custom", views, edges=[["a", "b"], ["b", "c"], ["d", "e"]])
    parts = ViewGraph.from_named_edges(views, [["a", "b"], ["d", "e"]], allow_isolated=True).components()
    assert parts == [[0, 1], [2], [3, 4]]


def test_graph_choices_are_the_presets_plus_custom():
    assert GRAPH_CHOICES == GRAPH_PRESETS + ("custom",)


def test_named_graph_round_trips_through_a_saved_flow(tmp_path):
    from multiflow.flow import MultiFlow, load_flow, save_flow

    g = build_view_graph("custom", ["left", "mid", "right"], edges=[["left", "mid"], ["mid", "right"]])
    save_flow(MultiFlow(4, g, n_blocks=1, hidden=4, kernel_sizes=(3,), seed=0), tmp_path / "m.safetensors")
    again = load_flow(tmp_path / "m.safetensors").graph
    assert again == g and again.names == ("left", "mid", "right")
