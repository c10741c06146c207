"""The one compiled part: the relay's fast path (botcall/relay/_fastpath.c, issue 17).

Everything else is in pyproject.toml. The extension is optional: where it
cannot be built (no compiler, no Python headers) ``pip install`` goes on
without it and the relay forwards in Python (``botcall/relay/fastpath.py``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "botcall.relay._fastpath",
            ["botcall/relay/_fastpath.c"],
            extra_compile_args=["-O2", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
