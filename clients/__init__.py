"""speakstream clients: what users run (speakstream-say, speakstream-stats), the Node client and the ghz configs."""
