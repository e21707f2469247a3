"""The data stage: fetch the archive (ingest, gcs), make it leak-free and fast to read (patients, images, split,
preprocess), and read it back (reader). synth writes a stand-in archive for demos and tests."""
