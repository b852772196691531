"""Seeds everything, and sets hypothesis up for numeric properties (no deadline: BLAS timing varies)."""

import os
import random
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import settings

# Corpora and tokenizers that tests make are cached here, never in the user's cache.
os.environ["COLLAPSE_LAB_CACHE"] = tempfile.mkdtemp(prefix="collapse-lab-test-cache-")
torch.set_num_threads(1)  # small element-wise work on a 2-core CPU is ~10x faster on one thread
settings.register_profile("collapse", deadline=None, max_examples=25, derandomize=True)
# Occasional deep runs: `pytest --hypothesis-profile thorough` (randomized, 500 examples a property).
settings.register_profile("thorough", deadline=None, max_examples=500, derandomize=False)
settings.load_profile("collapse")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
