"""Data: record schema and shards (records), converters (convert), tokenizer, the Grain pipeline
(examples -> packing -> pipeline) and the embedded demo corpus (demo). See docs/data.md."""
