import json

import pytest

from multiflow.errors import ConfigError
from multiflow.flow.graph import ViewGraph


def _undirected(g):
    return {frozenset(e) for e in g.edges}


def test_real_iad_layout():
    g = ViewGraph.real_iad()
    assert g.n_views == 5 and g.names == ("C1", "C2", "C3", "C4", "C5")
    for s in range(1, 5):
        assert g.has_edge(0, s) and g.has_edge(s, 0)
    assert set(g.neighbours(0)) == {1, 2, 3, 4}
    assert set(g.neighbours(1)) == {0, 2, 4}
    # opposite side views are not linked
    assert not g.has_edge(1, 3) and not g.has_edge(2, 4)
    assert len(g.edges) == 16


def test_real_iad_ring_order_and_ablations():
    g = ViewGraph.real_iad(ring_order=[1, 3, 2, 4])
    assert set(g.neighbours(1)) == {0, 3, 4}
    assert not g.has_edge(1, 2)
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
