from typing import Any

import numpy as np
from numpy.typing import NDArray

COUNT_RATIO_BOUNDS: tuple[float, float]

def layout(span: float, daily_cap: int, weekly_cap: int) -> dict[str, Any]: ...
def step(
    span: float,
    params: NDArray[np.float64],
    values: NDArray[np.float64],
    counts: NDArray[np.float64],
    buckets: NDArray[np.int64],
    side: NDArray[np.int8],
    scalars: NDArray[np.float64],
    ring: NDArray[np.float64],
    daily: NDArray[np.float64],
    dcount: NDArray[np.float64],
    doutliers: NDArray[np.float64],
    dspikes: NDArray[np.float64],
    weekly: NDArray[np.float64],
    wcount: NDArray[np.float64],
    daily_res: int,
    weekly_res: int,
    probe_cell: NDArray[np.int64],
    probe_values: NDArray[np.float64],
    probe_counts: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
