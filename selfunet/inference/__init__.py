"""Stage 4, inference: trained folds and images in, segmentations (and probabilities) out.

``sliding_window`` predicts one preprocessed array with Gaussian-weighted windows and mirroring;
``predict`` loads the folds of one or more configurations, averages them, reverts to the original
geometry and writes the labels; ``postprocess`` applies a connected-component rule.
"""
