"""Reliability battery: bad inputs, corrupt files and interruptions, each with its one-line
error."""
