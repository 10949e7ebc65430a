"""Models: the shared feature extractor, training data loaders, training and the ModelManager."""
