"""Using a trained backbone: predictions on new films (`cxr predict`), a model server (`cxr serve`) and a
SavedModel (`cxr export`)."""
