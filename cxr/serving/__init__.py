"""Using a trained backbone: predictions on new films (`cxr predict`) and a SavedModel for TF Serving/KServe."""
