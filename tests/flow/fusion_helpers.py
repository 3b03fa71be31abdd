"""Helpers of the fusion tests (a unique module name, imported by the flow tests): the new fusion
choices and the camera rig the ``geometry`` fusion needs."""

from __future__ import annotations


#: the fusion operators that do not assume aligned views (issue 24)
VIEW_FUSIONS = ["global_context", "correspondence", "geometry"]


def synth_rig(n_views: int, *, size: int = 96, plane_height: float = 0.0) -> dict:
    """A flow ``camera_rig`` of ``n_views`` cameras ``C1..Cn`` (the synthetic generator's rig)."""
    from multiflow.flow.geometry import camera_rig_config
    from multiflow.synth.generator import camera_rig_record
    from multiflow.synth.geometry import camera_rig

    record = camera_rig_record("test", camera_rig(n_views=n_views, size=size), [])
    return camera_rig_config(record["views"], [f"C{k + 1}" for k in range(n_views)], plane_height)


def fusion_kwargs(fusion: str, graph) -> dict:
    """What ``MultiFlow`` needs besides ``fusion``: the camera rig for ``geometry``."""
    if fusion != "geometry":
        return {}
    rig = synth_rig(graph.n_views)
    if graph.names is not None:
        for cam, name in zip(rig["views"], graph.names):
            cam["name"] = name
    return {"camera_rig": rig}


def subnet_kwargs(fusion: str, graph) -> dict:
    """What ``MultiViewSubnet`` / ``multiview_subnet_factory`` need besides ``fusion``: the plane
    homographies of the synthetic rig for ``geometry`` on a graph with edges."""
    if fusion != "geometry" or not graph.edges:
        return {}
    import torch

    from multiflow.flow.geometry import plane_homographies

    hom, depth = plane_homographies(synth_rig(graph.n_views), graph.n_views)
    return {"plane_homographies": (torch.from_numpy(hom), torch.from_numpy(depth))}
