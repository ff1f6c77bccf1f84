"""speakstream benchmarks (`make bench`, speakstream-bench, `python -m bench`) and the
paced ALSA device they share with the playback tests.

bench may import the server's modules (it measures them from inside); clients/
may not (tests/test_imports.py): a client talks to a server, maybe on another
machine, only through the gRPC contract.
"""
