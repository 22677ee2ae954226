"""The model families; importing this package registers every built-in model."""
