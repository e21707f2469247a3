"""cxr: compare ImageNet CNN backbones on chest X-rays, fairly and fast.

Subpackages follow the pipeline's stages: data (ingest, preprocess, the tf.data reader), training (backbones,
model, resumable training), results (evaluation per backbone, the comparison report). Beside them: settings (every
default), files (the names steps hand over), devices, cluster (submit to KFP) and cli (`cxr`).
"""
