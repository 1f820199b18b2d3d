"""Fuzzing: Hypothesis properties for the parsers of untrusted input, and a bounded,
seeded HTTP fuzz of every endpoint (``engine``; a longer run is ``bench/fuzz.py``)."""
