"""Local emulators of the Google Cloud services local mode needs."""
