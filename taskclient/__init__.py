"""Create Cloud Tasks HTTP tasks from the cloudrun-tasks stack's exported values."""
