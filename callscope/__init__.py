"""callscope: triage failed MiniVoice real-time audio streams.

The distribution holds the collectors (`collectors`), the pipeline (`pipeline`), the dashboard
(`dashboard`) and the MiniVoice simulator (`simulator`); this package is only the `callscope` CLI.
"""

__version__ = "0.1.0"
