"""Train, tune and serve PyTorch models on tabular data with Ray, from one YAML config."""
