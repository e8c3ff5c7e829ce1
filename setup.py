"""The native parts (C, under src/blindlink/matching/); everything else is in pyproject.toml:
the Dice kernel (_dice.c) and the match model's isotonic fit (_isotonic.c).

Both are optional: where they cannot be compiled (no C compiler), the install still succeeds
and blindlink computes the same results in Python: it matches with anonlink and numpy
(blindlink/matching/kernel.py) and fits with match_model._isotonic_python.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "blindlink.matching._dice",
            sources=["src/blindlink/matching/_dice.c"],
            optional=True,
        ),
        Extension(
            "blindlink.matching._isotonic",
            sources=["src/blindlink/matching/_isotonic.c"],
            # No fused multiply-adds: the results are bit-identical to the Python fallback's.
            extra_compile_args=["-ffp-contract=off"],
            optional=True,
        ),
    ]
)
