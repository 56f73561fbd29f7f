import numpy as np
from numpy.typing import NDArray

MAX_KEY_VALUES: int
KEY_VALUES_PER_RECORD: int

def stable_groups(
    keys: list[NDArray[np.int32] | NDArray[np.int64]],
) -> tuple[NDArray[np.intp], NDArray[np.intp]] | None: ...
