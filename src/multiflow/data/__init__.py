"""Multi-view data: the sample type every source yields, Real-IAD and folder readers."""

from multiflow.data.sample import MultiViewBatch, MultiViewSample, collate_samples

__all__ = ["MultiViewBatch", "MultiViewSample", "collate_samples"]
