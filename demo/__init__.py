"""The embedded main job: train and evaluate a small CLIP on generated scenes (`make demo`)."""
