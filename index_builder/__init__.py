"""The offline builder: features, training, evaluation, export and the gallery index."""
