"""Only for the optional C fast path of the data plane; metadata is in pyproject.toml.

The extension is optional: without a compiler dmvpn installs and runs on
the pure Python path (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dmvpn.dataplane._fastpath",
            ["src/dmvpn/dataplane/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
