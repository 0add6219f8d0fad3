"""Converters from the formats people have to the record schema (mm1_jax.data.records).

    python -m mm1_jax.data.convert webdataset   --input='laion/*.tar'      --output=corpus
    python -m mm1_jax.data.convert obelics      --input='obelics/*.parquet' --output=corpus
    python -m mm1_jax.data.convert text         --input='c4/*.jsonl'        --output=corpus
    python -m mm1_jax.data.convert image_folder --input=captions.jsonl      --output=corpus

Each source module yields `Raw` items (or `Skip`s for what is broken before any image is looked
at); `core.convert` checks the images (in worker processes when --workers > 1, in input order),
writes the shards and the summary. Bad input is counted, never fatal.
"""
