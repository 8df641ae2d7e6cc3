"""Build the optional C extensions (everything else is in pyproject.toml):

- `pipeline._otlp_fast`, the OTLP decoder;
- `collectors._media_fast`, the media frame reader of the receiver collector's hot path.

`optional=True`: when the compiler or Python headers are missing, the install still succeeds and
`pipeline.otlp` decodes with its pure-Python path (logging a warning once), and
`collectors.media` reads frames with its pure-Python path (about 0.8 us slower per frame).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pipeline._otlp_fast",
            sources=["pipeline/_otlp_fast.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        ),
        Extension(
            "collectors._media_fast",
            sources=["collectors/_media_fast.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra"],
        ),
    ]
)
