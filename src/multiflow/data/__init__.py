"""Multi-view data: the sample type every source yields, Real-IAD and folder readers, camera rigs."""

from multiflow.data.cameras import CameraRig, CameraView, ObjectPose, load_camera_rig
from multiflow.data.folder import FolderDataset
from multiflow.data.manifest import ManifestDataset
from multiflow.data.realiad import REALIAD_CLASSES, RealIADDataset, list_categories
from multiflow.data.records import RecordDataset, SampleRecord, SkippedSample
from multiflow.data.sample import MultiViewBatch, MultiViewSample, collate_samples

__all__ = [
    "REALIAD_CLASSES",
    "CameraRig",
    "CameraView",
    "FolderDataset",
    "ManifestDataset",
    "MultiViewBatch",
    "MultiViewSample",
    "ObjectPose",
    "RealIADDataset",
    "RecordDataset",
    "SampleRecord",
    "SkippedSample",
    "collate_samples",
    "list_categories",
    "load_camera_rig",
]
