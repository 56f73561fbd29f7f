import numpy as np
from numpy.typing import NDArray

def walk(
    counts: NDArray[np.int64],
    keys: NDArray[np.int64],
    entry_key: NDArray[np.int64],
    entry_raw: NDArray[np.float64],
    entry_scope: NDArray[np.int64],
    step_entries: NDArray[np.int64],
    step_zeros: NDArray[np.int64],
    step_age: NDArray[np.int64],
    present: NDArray[np.uint8],
    scope_max: NDArray[np.float64],
    scope_age: NDArray[np.int64],
    forget_after: int,
    noise_fraction: float,
    tail_min: int,
    tail_fraction: float,
) -> tuple[dict[str, NDArray[np.int64]], NDArray[np.int64], NDArray[np.float64]]: ...
