"""Fitting a folder's out-of-distribution gate (``python -m train.gate``): the features and the fit
(``fit``), the real out-of-scope images and the cut-off rule (``scope``), the non-X-ray probes (``probes``)."""
