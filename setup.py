"""Build the optional C decoder `pipeline._otlp_fast` (everything else is in pyproject.toml).

`optional=True`: when the compiler or Python headers are missing, the install still succeeds and
`pipeline.otlp` decodes with its pure-Python path (logging a warning once).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pipeline._otlp_fast",
            sources=["pipeline/_otlp_fast.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
