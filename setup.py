"""The native Dice kernel (src/blindlink/matching/_dice.c); everything else is in pyproject.toml.

The extension is optional: where it cannot be compiled (no C compiler), the install still
succeeds and blindlink matches with anonlink and numpy instead (blindlink/matching/kernel.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "blindlink.matching._dice",
            sources=["src/blindlink/matching/_dice.c"],
            optional=True,
        )
    ]
)
