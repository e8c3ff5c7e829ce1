"""Progress bars on stderr, silent when stderr is not a terminal."""

from __future__ import annotations

from tqdm import tqdm


def bar(total: int, desc: str, unit: str = "rec", unit_scale: bool = True) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        disable=None,
        leave=False,
        dynamic_ncols=True,
    )
