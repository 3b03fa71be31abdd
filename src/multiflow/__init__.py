"""multiflow: multi-view industrial anomaly detection with normalizing flows.

Implements Multi-Flow (Kruse & Rosenhahn, CVPR 2025 workshops, arXiv 2504.03306): a frozen CNN
turns each camera view into a feature map, a normalizing flow whose coupling subnetworks pass
messages between neighbouring views maps them to a Gaussian, and the per-pixel negative
log-likelihood is the anomaly map.
"""

__version__ = "0.1.0"
