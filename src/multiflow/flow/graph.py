"""The camera layout as data: a directed graph over the views of one sample.

A :class:`ViewGraph` has ``n_views`` nodes (indices ``0..n_views-1``, optional names) and a set of
directed edges ``j -> i`` meaning "view ``j`` sends information to view ``i``" in the multi-view
st-network (paper Eq. 4: ``N(i) = {j : j -> i}``). Self-loops are not edges: every view is always
connected to itself by the self path ``f_ii`` of Eq. 4.

Ready-made layouts: :meth:`ViewGraph.real_iad` (top view ``0`` <-> every side view, side views in a
ring, Fig. 4 of the paper, with the ablations of Tab. 2), :meth:`ring`, :meth:`top_only`,
:meth:`none`, :meth:`full` and :meth:`from_edges` for anything else.

From configuration (view names, a preset name or ``custom`` edges between named views):
:func:`build_view_graph`, whose presets are listed once in :data:`GRAPH_PRESETS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from multiflow.errors import ConfigError


class ViewGraph:
    """Directed view graph. Immutable after construction.

    Args:
        n_views: number of views ``V >= 1``.
        edges: directed edges ``(j, i)`` meaning ``j -> i`` (``j`` is a neighbour of ``i``).
            Duplicates are merged; self-loops and out-of-range indices raise :class:`ConfigError`.
        names: optional view names (length ``n_views``, unique), e.g. ``["C1", ..., "C5"]``.
    """

    def __init__(
        self,
        n_views: int,
        edges: Iterable[Sequence[int]] = (),
        names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(n_views, int) or isinstance(n_views, bool) or n_views < 1:
            raise ConfigError(f"ViewGraph needs n_views >= 1, got {n_views!r}")
        clean: set[tuple[int, int]] = set()
        for edge in edges:
            if len(edge) != 2:
                raise ConfigError(f"ViewGraph edge {edge!r} is not a pair (source, target)")
            j, i = (int(edge[0]), int(edge[1]))
            if not (0 <= j < n_views and 0 <= i < n_views):
                raise ConfigError(f"ViewGraph edge {j}->{i} is outside views 0..{n_views - 1}")
            if j == i:
                raise ConfigError(
                    f"ViewGraph edge {j}->{i} is a self-loop; the self path is always present"
                )
            clean.add((j, i))
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != n_views:
                raise ConfigError(f"ViewGraph got {len(names)} names for {n_views} views")
            if len(set(names)) != n_views:
                raise ConfigError(f"ViewGraph view names are not unique: {names}")
        self._n = n_views
        self._edges: tuple[tuple[int, int], ...] = tuple(sorted(clean))
        self._names: tuple[str, ...] | None = None if names is None else tuple(names)
        self._in: tuple[tuple[int, ...], ...] = tuple(
            tuple(sorted(j for (j, t) in self._edges if t == i)) for i in range(n_views)
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_edges(
        cls, n: int, edges: Iterable[Sequence[int]], names: Sequence[str] | None = None
    ) -> "ViewGraph":
        """Graph with exactly the given directed edges ``(j, i)`` = ``j -> i``."""
        return cls(n, edges, names)

    @classmethod
    def from_named_edges(
        cls, names: Sequence[str], edges: Iterable[Sequence[str]], *, allow_isolated: bool = False
    ) -> "ViewGraph":
        """Graph over the views ``names`` with undirected edges between named views.

        Each pair ``[a, b]`` links ``a`` and ``b`` both ways (``a -> b`` and ``b -> a``): two cameras
        that see overlapping regions of the part exchange messages in both directions (Eq. 4).

        Raises:
            ConfigError: a pair that is not two names, a name not in ``names``, a self-loop, the same
                pair twice (in either order), or, unless ``allow_isolated``, views that are not
                connected to the rest (the message names them).
        """
        names = [str(v) for v in names]
        index = {v: k for k, v in enumerate(names)}
        if len(index) != len(names):
            raise ConfigError(f"view names are not unique: {names}")
        if isinstance(edges, (str, bytes)):
            raise ConfigError(f"graph edges must be a list of [view_a, view_b] pairs, got {edges!r}")
        seen: dict[frozenset[int], list[str]] = {}
        directed: list[tuple[int, int]] = []
        for pair in edges:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ConfigError(f"graph edge {pair!r} is not a pair [view_a, view_b]")
            a, b = str(pair[0]), str(pair[1])
            for v in (a, b):
                if v not in index:
                    raise ConfigError(f"graph edge [{a}, {b}] names unknown view {v!r}; the views are {names}")
            if a == b:
                raise ConfigError(
                    f"graph edge [{a}, {b}] is a self-loop; a view is always connected to itself"
                )
            key = frozenset((index[a], index[b]))
            if key in seen:
                first = seen[key]
                raise ConfigError(
                    f"graph edge [{a}, {b}] is given twice (first as [{first[0]}, {first[1]}]); "
                    "edges are undirected"
                )
            seen[key] = [a, b]
            directed += [(index[a], index[b]), (index[b], index[a])]
        graph = cls(len(names), directed, names)
        if not allow_isolated:
            parts = graph.components()
            if len(parts) > 1:
                main = max(parts, key=len)
                rest = sorted((v for p in parts if p is not main for v in p))
                raise ConfigError(
                    f"graph views {[names[v] for v in rest]} are not connected to views "
                    f"{[names[v] for v in main]}; add edges linking them (or use model.graph=none "
                    "for independent views)"
                )
        return graph

    @classmethod
    def none(cls, n: int, names: Sequence[str] | None = None) -> "ViewGraph":
        """``n`` independent views (no cross-view links; Tab. 2 "none")."""
        return cls(n, (), names)

    @classmethod
    def full(cls, n: int, names: Sequence[str] | None = None) -> "ViewGraph":
        """Every view connected to every other view in both directions."""
        return cls(n, [(j, i) for j in range(n) for i in range(n) if i != j], names)

    @classmethod
    def ring(cls, n: int, names: Sequence[str] | None = None) -> "ViewGraph":
        """Views ``0..n-1`` in a ring, each linked both ways to ``i-1`` and ``i+1`` (mod ``n``)."""
        return cls(n, _ring_edges(list(range(n))), names)

    @classmethod
    def top_only(cls, n: int, names: Sequence[str] | None = None) -> "ViewGraph":
        """View ``0`` linked both ways to each of the ``n - 1`` other views; no other links."""
        return cls(n, [e for s in range(1, n) for e in ((0, s), (s, 0))], names)

    @classmethod
    def real_iad(
        cls,
        n_side: int = 4,
        *,
        ring_order: Sequence[int] | None = None,
        top: bool = True,
        neighbours: bool = True,
        names: Sequence[str] | None = None,
    ) -> "ViewGraph":
        """Real-IAD layout (paper Fig. 4): top view ``0`` and side views ``1..n_side``.

        Args:
            n_side: number of side views (Real-IAD: 4, i.e. 5 views C1..C5).
            ring_order: the side views in ring order (a permutation of ``1..n_side``); adjacent
                entries (cyclically) are neighbours. Default ``1, 2, ..., n_side``.
            top: top-view connections ``0 <-> s`` for every side view (Tab. 2).
            neighbours: neighbour-view connections around the ring (Tab. 2).
            names: view names; default ``C1 .. C{n_side+1}``.
        """
        if n_side < 0:
            raise ConfigError(f"real_iad needs n_side >= 0, got {n_side}")
        order = list(range(1, n_side + 1)) if ring_order is None else [int(v) for v in ring_order]
        if sorted(order) != list(range(1, n_side + 1)):
            raise ConfigError(
                f"real_iad ring_order {order} must be a permutation of the side views 1..{n_side}"
            )
        edges: list[tuple[int, int]] = []
        if top:
            edges += [e for s in order for e in ((0, s), (s, 0))]
        if neighbours:
            edges += _ring_edges(order)
        if names is None:
            names = [f"C{v + 1}" for v in range(n_side + 1)]
        return cls(n_side + 1, edges, names)

    # ------------------------------------------------------------------ queries
    @property
    def n_views(self) -> int:
        return self._n

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Sorted directed edges ``(j, i)`` = ``j -> i``."""
        return self._edges

    @property
    def names(self) -> tuple[str, ...] | None:
        return self._names

    def neighbours(self, i: int) -> tuple[int, ...]:
        """``N(i)``: the views ``j`` with an edge ``j -> i`` (sorted; excludes ``i`` itself)."""
        if not 0 <= i < self._n:
            raise ConfigError(f"view {i} is outside 0..{self._n - 1}")
        return self._in[i]

    def components(self) -> list[list[int]]:
        """Connected components of the graph with edge directions ignored (sorted, by first view)."""
        adj: list[set[int]] = [set() for _ in range(self._n)]
        for j, i in self._edges:
            adj[j].add(i)
            adj[i].add(j)
        comp = [-1] * self._n
        parts: list[list[int]] = []
        for start in range(self._n):
            if comp[start] != -1:
                continue
            comp[start] = len(parts)
            stack, part = [start], []
            while stack:
                v = stack.pop()
                part.append(v)
                for u in adj[v]:
                    if comp[u] == -1:
                        comp[u] = comp[start]
                        stack.append(u)
            parts.append(sorted(part))
        return parts

    def reachable_from(self, i: int, hops: int) -> set[int]:
        """Views that can influence view ``i`` within ``hops`` applications of Eq. 4.

        ``R_0(i) = {i}``, ``R_{k+1}(i) = R_k(i) ∪ ⋃_{v in R_k(i)} N(v)``.
        """
        reach = {i}
        for _ in range(hops):
            reach = reach | {j for v in reach for j in self._in[v]}
        return reach

    # ------------------------------------------------------------------ symmetry
    def iter_automorphisms(
        self, fixed: dict[int, int] | None = None
    ) -> Iterator[tuple[int, ...]]:
        """Yield view permutations ``sigma`` (``sigma[v]`` = image of ``v``) preserving the edges.

        ``sigma`` is an automorphism iff ``j -> i`` is an edge exactly when ``sigma[j] ->
        sigma[i]`` is. ``fixed`` pre-assigns some images. Backtracking search with in/out-degree
        pruning; the number of automorphisms can be ``n!`` (``full``), so iterate lazily.
        """
        n = self._n
        adj = set(self._edges)
        deg = [(len(self._in[v]), sum(1 for (j, _) in self._edges if j == v)) for v in range(n)]
        sigma: list[int] = [-1] * n
        used = [False] * n
        for src, dst in (fixed or {}).items():
            if not (0 <= src < n and 0 <= dst < n) or used[dst] or deg[src] != deg[dst]:
                return
            if sigma[src] != -1:
                return
            sigma[src], used[dst] = dst, True
        for a in range(n):
            for b in range(n):
                if a != b and sigma[a] != -1 and sigma[b] != -1:
                    if ((a, b) in adj) != ((sigma[a], sigma[b]) in adj):
                        return
        free = [v for v in range(n) if sigma[v] == -1]

        def consistent(v: int, img: int) -> bool:
            if deg[v] != deg[img]:
                return False
            for u in range(n):
                if sigma[u] == -1 or u == v:
                    continue
                if ((u, v) in adj) != ((sigma[u], img) in adj):
                    return False
                if ((v, u) in adj) != ((img, sigma[u]) in adj):
                    return False
            return True

        def search(k: int) -> Iterator[tuple[int, ...]]:
            if k == len(free):
                yield tuple(sigma)
                return
            v = free[k]
            for img in range(n):
                if not used[img] and consistent(v, img):
                    sigma[v], used[img] = img, True
                    yield from search(k + 1)
                    sigma[v], used[img] = -1, False

        yield from search(0)

    def automorphisms(self) -> list[tuple[int, ...]]:
        """All automorphisms (see :meth:`iter_automorphisms`); the identity is always included."""
        return list(self.iter_automorphisms())

    def view_orbits(self) -> list[int]:
        """Orbit id per view under the automorphism group (views sharing an id are symmetric).

        Ids are numbered in order of first appearance, so ``view_orbits()[0] == 0``.
        """
        cls = [-1] * self._n
        k = 0
        for v in range(self._n):
            if cls[v] != -1:
                continue
            cls[v] = k
            for u in range(v + 1, self._n):
                if cls[u] == -1 and next(self.iter_automorphisms({v: u}), None) is not None:
                    cls[u] = k
            k += 1
        return cls

    def edge_orbits(self) -> dict[tuple[int, int], int]:
        """Orbit id per directed edge under the automorphism group (ids in edge order)."""
        cls: dict[tuple[int, int], int] = {}
        k = 0
        for e in self._edges:
            if e in cls:
                continue
            cls[e] = k
            for f in self._edges:
                if f not in cls and f[0] != f[1]:
                    if next(self.iter_automorphisms({e[0]: f[0], e[1]: f[1]}), None) is not None:
                        cls[f] = k
            k += 1
        return cls

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{"n_views", "edges": [[j, i], ...], "names"}``."""
        return {
            "n_views": self._n,
            "edges": [[j, i] for (j, i) in self._edges],
            "names": None if self._names is None else list(self._names),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "ViewGraph":
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on malformed input."""
        if not isinstance(data, dict) or "n_views" not in data:
            raise ConfigError(f"a view graph must be a dict with 'n_views' and 'edges', got {data!r}")
        edges = data.get("edges", [])
        if not isinstance(edges, list):
            raise ConfigError(f"view graph 'edges' must be a list of [source, target], got {edges!r}")
        try:
            pairs = [(int(e[0]), int(e[1])) if len(e) == 2 else tuple(e) for e in edges]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"view graph 'edges' are not integer pairs: {edges!r}") from exc
        return cls(data["n_views"], pairs, data.get("names"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ViewGraph):
            return NotImplemented
        return (self._n, self._edges, self._names) == (other._n, other._edges, other._names)

    def __hash__(self) -> int:
        return hash((self._n, self._edges, self._names))

    def __repr__(self) -> str:
        names = "" if self._names is None else f", names={list(self._names)}"
        return f"ViewGraph(n_views={self._n}, edges={[list(e) for e in self._edges]}{names})"


def _ring_edges(order: list[int]) -> list[tuple[int, int]]:
    """Both-way edges between cyclically adjacent entries of ``order`` (none for < 2 views)."""
    n = len(order)
    if n < 2:
        return []
    pairs = [(order[k], order[(k + 1) % n]) for k in range(n if n > 2 else 1)]
    return [e for (a, b) in pairs for e in ((a, b), (b, a))]


#: Named layouts of :func:`build_view_graph` (``model.graph``), Tab. 2 of the paper plus ``full``:
#: ``real_iad`` top camera <-> every side camera + side cameras in a ring (Fig. 4); ``top_only`` the
#: top links alone; ``ring`` the ring alone (a top camera, if named, keeps no links); ``none`` no
#: cross-view links; ``full`` every pair of views.
GRAPH_PRESETS: tuple[str, ...] = ("real_iad", "top_only", "ring", "none", "full")
#: What ``model.graph`` accepts: a preset, or ``custom`` with explicit ``model.edges``.
GRAPH_CHOICES: tuple[str, ...] = GRAPH_PRESETS + ("custom",)
#: View names whose first entry is known to be the top camera when none is named (Real-IAD and
#: ``multiflow synth`` call it ``C1``; the folder-format example calls it ``top``).
TOP_VIEW_NAMES: tuple[str, ...] = ("C1", "top")


def build_view_graph(
    preset: str,
    view_names: Sequence[str],
    *,
    edges: Sequence[Sequence[str]] | None = None,
    top: str | None = None,
    ring_order: Sequence[int | str] | None = None,
) -> ViewGraph:
    """The view graph of a configured camera rig.

    Args:
        preset: one of :data:`GRAPH_CHOICES`. ``custom`` takes exactly ``edges``.
        view_names: the views in the order of the view axis ``V``.
        edges: for ``custom``: undirected ``[view_a, view_b]`` pairs (see
            :meth:`ViewGraph.from_named_edges`); every view must be connected to the others.
        top: name of the top camera for ``real_iad``, ``top_only`` and ``ring`` (ignored by
            ``none``/``full``). When not given, position ``0`` is the top camera only where that is
            unambiguous: at most two views (the graph is the same either way) or a first view
            named as in :data:`TOP_VIEW_NAMES`; otherwise ``real_iad``/``top_only`` raise, and
            ``ring`` links all views in one ring.
        ring_order: the ring's views in ring order (names, or positions in ``view_names``); must
            be a permutation of the views other than the top camera. Default: their order in
            ``view_names``.

    Returns:
        a :class:`ViewGraph` named by ``view_names``.

    Raises:
        ConfigError: unknown preset, edges with a preset or none with ``custom``, an invalid edge
            (unknown view, self-loop, duplicate), disconnected views in a custom graph, a top
            camera that is not among the views or cannot be told, a bad ``ring_order``.
    """
    names = [str(v) for v in view_names]
    n = len(names)
    if n == 0:
        raise ConfigError("a view graph needs at least one view")
    if preset not in GRAPH_CHOICES:
        raise ConfigError(f"view graph must be one of {list(GRAPH_CHOICES)}, got {preset!r}")
    edges = list(edges or [])
    if preset == "custom":
        if not edges and n > 1:
            raise ConfigError(
                f"view graph 'custom' needs edges: a list of [view_a, view_b] pairs over {names}"
            )
        return ViewGraph.from_named_edges(names, edges)
    if edges:
        raise ConfigError(
            f"view graph edges {edges} were given with the preset {preset!r}; "
            "edges are only used with graph 'custom'"
        )
    if preset == "none":
        return ViewGraph.none(n, names)
    if preset == "full":
        return ViewGraph.full(n, names)
    t = _top_view(preset, names, top)
    ring = _ring_views(names, t, ring_order)
    directed: list[tuple[int, int]] = []
    if preset in ("real_iad", "top_only"):
        directed += [e for s in ring for e in ((t, s), (s, t))]
    if preset in ("real_iad", "ring"):
        directed += _ring_edges(ring)
    return ViewGraph(n, directed, names)


def _top_view(preset: str, names: list[str], top: str | None) -> int | None:
    """Index of the top camera (``None``: no top camera, only possible for ``ring``)."""
    if top:
        if top not in names:
            raise ConfigError(f"top view {top!r} is not among the views {names}")
        return names.index(top)
    if len(names) <= 2 or names[0] in TOP_VIEW_NAMES:
        return 0
    if preset == "ring":
        return None
    raise ConfigError(
        f"view graph {preset!r} needs the top camera: name it with model.top_view (one of {names}); "
        f"position 0 is assumed only when the first view is called {' or '.join(TOP_VIEW_NAMES)}"
    )


def _ring_views(names: list[str], top: int | None, ring_order: Sequence[int | str] | None) -> list[int]:
    """The ring's view indices in ring order: every view except ``top``, validated."""
    expected = [v for v in range(len(names)) if v != top]
    if not ring_order:
        return expected
    order: list[int] = []
    for v in ring_order:
        if isinstance(v, str) and not v.lstrip("-").isdigit():
            if v not in names:
                raise ConfigError(f"ring_order names unknown view {v!r}; the views are {names}")
            order.append(names.index(v))
        else:
            k = int(v)
            if not 0 <= k < len(names):
                raise ConfigError(f"ring_order position {k} is outside the views 0..{len(names) - 1}")
            order.append(k)
    if sorted(order) != expected:
        raise ConfigError(
            f"ring_order {list(ring_order)} must list each of the ring views "
            f"{[names[v] for v in expected]} exactly once"
            + ("" if top is None else f" (not the top view {names[top]})")
        )
    return order
