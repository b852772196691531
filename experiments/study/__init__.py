"""Studies: a grid of models, checkpoints and layers, run on this machine or on SLURM, resumable,
into one table (``STUDY/results.csv``). ``collapse study run NAME|SPEC``; ``collapse study status``."""

from .driver import StudyReport, run_study, study_status
from .spec import SpecError, StudySpec, load_spec

__all__ = ["SpecError", "StudyReport", "StudySpec", "load_spec", "run_study", "study_status"]
