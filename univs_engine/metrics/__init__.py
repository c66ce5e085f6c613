"""Evaluation metrics of the six tasks, one module per family (pure numpy / cv2).

* ``davis``: J, F, J&F (VOS, PVOS, RefVOS)
* ``ytvis``: spatio-temporal mask AP / AR (VIS)
* ``vss``:   mIoU, mVC_n (VSS)
* ``vps``:   VPQ, STQ (VPS)
"""
from .davis import (
    DavisEvaluator, DavisResult, boundary_f, davis_jf, davis_statistics, masks_from_labels, region_similarity, seg2bmap,
)
from .vps import STQEvaluator, VPQEvaluator, evaluate_vps, panoptic_to_semantic_instance, pq_from_stats, vpq_stats
from .vss import (
    VSSEvaluator, confusion_matrix, evaluate_vss, iou_from_confusion, miou_from_confusion, window_consistency,
)
from .ytvis import DetectionTrack, GroundTruthTrack, evaluate_ytvis, spatiotemporal_iou

__all__ = [
    "DavisEvaluator", "DavisResult", "boundary_f", "davis_jf", "davis_statistics", "masks_from_labels",
    "region_similarity", "seg2bmap",
    "STQEvaluator", "VPQEvaluator", "evaluate_vps", "panoptic_to_semantic_instance", "pq_from_stats", "vpq_stats",
    "VSSEvaluator", "confusion_matrix", "evaluate_vss", "iou_from_confusion", "miou_from_confusion",
    "window_consistency",
    "DetectionTrack", "GroundTruthTrack", "evaluate_ytvis", "spatiotemporal_iou",
]
