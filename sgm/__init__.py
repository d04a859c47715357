"""sgm: score-based generative models through SDEs, in JAX + Equinox + diffrax."""

from .analytic import GaussianMixture
from .errors import CheckpointError, ConfigError, DataError, NumericalError, SGMError
from .likelihood import Exact, Hutchinson, StepControl, bits_per_dim, log_likelihood
from .loss import ImportanceTimeSampler, dsm_loss, dsm_loss_per_sample
from .sampler_settings import SamplerSettings
from .samplers import sample
from .score import GuidedScore, ScoreModel, tweedie_x0
from .sde import (
    AbstractBetaSDE,
    AbstractSchedule,
    AbstractSDE,
    CosineSchedule,
    LearnedSchedule,
    LinearSchedule,
    QuadraticSchedule,
    ScaledLinearSchedule,
    SigmoidSchedule,
    SubVPSDE,
    VESDE,
    VPSDE,
)
from .step_search import Tuning, search_grid, tune_grid

__all__ = [
    "AbstractBetaSDE", "AbstractSDE", "AbstractSchedule", "CheckpointError", "ConfigError",
    "CosineSchedule", "DataError", "Exact", "GaussianMixture", "GuidedScore", "Hutchinson",
    "ImportanceTimeSampler", "LearnedSchedule", "LinearSchedule", "NumericalError",
    "QuadraticSchedule", "SGMError", "SamplerSettings", "ScaledLinearSchedule", "ScoreModel",
    "SigmoidSchedule", "StepControl", "SubVPSDE", "Tuning", "VESDE", "VPSDE", "bits_per_dim",
    "dsm_loss", "dsm_loss_per_sample", "log_likelihood", "sample", "search_grid", "tune_grid",
    "tweedie_x0",
]
