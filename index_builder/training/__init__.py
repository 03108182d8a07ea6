"""Training and evaluating IIAE: data sets, the backbone feature cache, recipes, training
runs, the known-category head and retrieval metrics. Needs PyTorch."""
