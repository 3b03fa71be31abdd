"""The multi-view normalizing flow (paper Sec. 3): graph, blocks, st-networks, model and I/O."""

from multiflow.flow.graph import ViewGraph
from multiflow.flow.io import load_flow, save_flow
from multiflow.flow.model import FlowOutput, MultiFlow, masked_loss, present_mask
from multiflow.flow.single_view import SingleViewFlow

__all__ = [
    "MultiFlow", "SingleViewFlow", "FlowOutput", "ViewGraph", "save_flow", "load_flow", "masked_loss", "present_mask",
]
