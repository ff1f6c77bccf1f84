"""speakstream clients: playback (speakstream-say), load generation, benchmarks."""
