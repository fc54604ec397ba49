"""segdiff: image segmentation with diffusion probabilistic models (Amit et al. 2021).

    >>> from segdiff import SegDiff, DDPMScheduler, predict
    >>> net = SegDiff.from_preset("tiny")
    >>> pred = predict(net, images, DDPMScheduler(100), num_generations=30)
    >>> pred.prob, pred.mask, pred.uncertainty
"""

from .config import DataConfig, DiffusionConfig, ExperimentConfig, ModelConfig, SampleConfig, TrainConfig
from .diffusion import DDPMScheduler
from .metrics import (
    ReliabilityDiagram, boundary_disagreement, boundary_f, boundary_f_mean, calibration_score,
    expected_calibration_error, f1, iou, mean_entropy, mean_over_classes, mean_over_images, reliability_diagram,
    size_ratio_coverage, weighted_coverage,
)
from .model import SegDiff
from .sampling import Prediction, predict, sample_ddim, sample_ddpm, sample_dpm_solver, sample_sde_dpm_solver
from .sliding import predict_sliding
from .models import DiffusionSegmenter, Ensemble, Refinement, Segmenter, UNetSegmenter, build_model, load_model
from .protocol import Protocol, protocol_for
from .evaluation import evaluate
from .training import TrainingDiverged, train
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .export import export_model

__version__ = "0.1.0"

__all__ = [
    "SegDiff", "DDPMScheduler", "predict", "Prediction", "predict_sliding", "evaluate", "train",
    "sample_ddpm", "sample_ddim", "sample_dpm_solver", "sample_sde_dpm_solver",
    "Segmenter", "DiffusionSegmenter", "UNetSegmenter", "Ensemble", "Refinement", "build_model", "load_model",
    "Protocol", "protocol_for",
    "load_checkpoint", "save_checkpoint", "export_model", "CheckpointError", "TrainingDiverged",
    "ExperimentConfig", "ModelConfig", "DiffusionConfig", "DataConfig", "TrainConfig", "SampleConfig",
    "iou", "f1", "boundary_f", "boundary_f_mean", "weighted_coverage", "size_ratio_coverage",
    "calibration_score", "expected_calibration_error", "reliability_diagram", "ReliabilityDiagram",
    "mean_over_images", "mean_over_classes", "mean_entropy", "boundary_disagreement",
]
