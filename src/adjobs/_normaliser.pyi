from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

class Rules:
    def __init__(
        self,
        knot_x: NDArray[np.float64],
        knot_y: NDArray[np.float64],
        noise_percentile: float,
        noise_multiplier: float,
        percentile_power: float,
        z: float,
        z2: float,
        cap_slope: float,
        max_score: float,
        discretisation: float,
        tail_min: int,
    ) -> None: ...
    @property
    def noise_knot(self) -> float: ...

def walk_raw(
    rules: Rules,
    held_keys: NDArray[np.int64],
    held_counts: NDArray[np.int64],
    raw: NDArray[np.float64],
    entry_scope: NDArray[np.int64],
    step_entries: NDArray[np.int64],
    step_zeros: NDArray[np.int64],
    step_age: NDArray[np.int64],
    present: NDArray[np.uint8],
    scope_max: NDArray[np.float64],
    scope_age: NDArray[np.int64],
    forget_after: int,
    tail_fraction: float,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]: ...
def scores(
    rules: Rules,
    raw: NDArray[np.float64],
    discretised: NDArray[np.int64],
    cap: NDArray[np.float64] | None,
    n: int,
    zeros: int,
    noise_key: int,
    below: NDArray[np.int64],
    scope_max: NDArray[np.float64],
    tail_k: int,
    tail_u: int,
    tail_excess: int,
) -> NDArray[np.float64]: ...
def level_steps(
    records: Sequence[int] | NDArray[np.int64],
    influencers: Sequence[int] | NDArray[np.int64],
    fields: Sequence[int] | NDArray[np.int64],
    seen: NDArray[np.int64],
) -> tuple[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]], NDArray[np.int64]]: ...
