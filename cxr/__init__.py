"""cxr: compare ImageNet CNN backbones on chest X-rays, fairly and fast.

Modules, in the order data flows through them: synth (a stand-in dataset), ingest (fetch and normalise),
patients / images / split / preprocess (leak-free TFRecords), data (the tf.data reader), backbones / model /
train (the study), evaluate (medical metrics), report (plots and leaderboard), cluster (submit to KFP).
"""
