"""speakstream benchmarks (`make bench`, speakstream-bench) and the paced ALSA device they share with the tests."""
