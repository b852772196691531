"""The metric choices of published papers, by name (torch-free, so a command line can list them
without loading the numerics)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Papyan, Han & Donoho (2020) with Galanti et al.'s CDNV: squared distances, token-weighted mean.
    "papyan2020": dict(cdnv_power=2.0, center="weighted", min_count=1),
    # Wu & Papyan, "Linguistic Collapse" (NeurIPS 2024) code (rhubarbwu/neural-collapse): an extra
    # power in the CDNV denominator, the class-uniform global mean, every class seen at least once,
    # Bessel-corrected spreads over classes (torch.std's default there).
    "lc2024": dict(cdnv_power=4.0, center="uniform", min_count=1, spread_ddof=1),
}
