"""``agegender batch``: resumable, exactly-once jobs over millions of images.

    sources.py   SOURCES... -> a stream of Input records (files, folders, globs, text/CSV/
                 Parquet lists, object-store URIs), each with its resume key; never a list
                 of all paths in memory
    rows.py      ImageResult -> flat rows (one per face, one per image without a face or
                 with an error): the dataset's schema, shared by every sink and engine;
                 with --video-rows tracks one row per tracked person of a video
    dataset.py   the output folder: manifest (configuration + model hashes), lock, part
                 files committed atomically with their input keys, resume, --overwrite,
                 retries of transient failures (attempt records, older rows pruned)
    local.py     the local engine: Estimator.predict_many over the stream, parts committed
                 as inputs complete, progress and summary
    ray_engine.py  the Ray Data engine: pending inputs -> map_batches over an actor pool of
                 Estimators, each actor writing its parts to DEST -> small summaries back
                 to the driver, which commits each part's keys (dataset.py)

Nothing here is imported by the rest of the package; pyarrow is needed (``agegender[batch]``).
"""
